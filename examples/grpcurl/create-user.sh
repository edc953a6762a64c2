#!/usr/bin/env bash
# Creates an account and gives it a role; prints the account.
#   TOKEN=… examples/grpcurl/create-user.sh ops ops@example.com 'a-long-password' operator
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
USERNAME=${1:?username} EMAIL=${2:?email} NEW_PASSWORD=${3:?password} ROLE=${4:-viewer}

USER_ID=$(jq -n --arg u "$USERNAME" --arg e "$EMAIL" --arg p "$NEW_PASSWORD" \
    '{username: $u, email: $e, password: $p}' |
  call UserService/CreateUser |
  jq -r .user.id)

# Roles can also be given at creation ("roles": [...]); AssignRole gives one
# later. Either way the caller must hold every permission the role holds.
jq -n --arg id "$USER_ID" --arg role "$ROLE" '{userId: $id, role: $role}' |
  call RoleService/AssignRole >/dev/null

jq -n --arg id "$USER_ID" '{id: $id}' |
  call UserService/GetUser |
  jq -c '.user | {id, username, email, roles: (.roles // [])}'
