#!/usr/bin/env bash
# Logs in and prints the access token, for the other scripts:
#   export TOKEN=$(LOGIN=admin PASSWORD=admin123 examples/grpcurl/login.sh)
# Access tokens last 15 minutes; AuthService/Refresh trades the refresh token
# (also in Login's answer) for a new pair.
set -euo pipefail
ADDR=${ADDR:-127.0.0.1:50051}
GRPCURL=${GRPCURL:-grpcurl}
# Plaintext unless CA_FILE names the CA of the server's certificate
# (grpcurl -cacert); CLIENT_CERT_FILE and CLIENT_KEY_FILE add a client
# certificate for mutual TLS (-cert, -key). ADDR must then be a name the
# certificate carries.
tls=(-plaintext)
if [ -n "${CA_FILE:-}" ]; then
  tls=(-cacert "$CA_FILE")
  if [ -n "${CLIENT_CERT_FILE:-}" ]; then tls+=(-cert "$CLIENT_CERT_FILE" -key "$CLIENT_KEY_FILE"); fi
fi
: "${LOGIN:?set LOGIN (an email or a username)}" "${PASSWORD:?set PASSWORD}"

# jq builds the request, so a password with quotes in it stays one string.
jq -n --arg login "$LOGIN" --arg password "$PASSWORD" '{login: $login, password: $password}' |
  "$GRPCURL" "${tls[@]}" -d @ "$ADDR" automation.v1.AuthService/Login |
  jq -r .accessToken
