#!/usr/bin/env bash
# Logs in and prints the access token, for the other scripts:
#   export TOKEN=$(LOGIN=admin PASSWORD=admin123 examples/grpcurl/login.sh)
# Access tokens last 15 minutes; AuthService/Refresh trades the refresh token
# (also in Login's answer) for a new pair.
set -euo pipefail
TOKEN= # a login sends no token
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${LOGIN:?set LOGIN (an email or a username)}" "${PASSWORD:?set PASSWORD}"

# jq builds the request, so a password with quotes in it stays one string.
jq -n --arg login "$LOGIN" --arg password "$PASSWORD" '{login: $login, password: $password}' |
  call AuthService/Login |
  jq -r .accessToken
