#!/usr/bin/env bash
# Creates an account and gives it a role; prints the account.
#   TOKEN=… examples/grpcurl/create-user.sh ops ops@example.com 'a-long-password' operator
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
: "${TOKEN:?set TOKEN (see login.sh)}"
USERNAME=${1:?username} EMAIL=${2:?email} NEW_PASSWORD=${3:?password} ROLE=${4:-viewer}
auth=(-H "authorization: Bearer $TOKEN")

USER_ID=$(jq -n --arg u "$USERNAME" --arg e "$EMAIL" --arg p "$NEW_PASSWORD" \
    '{username: $u, email: $e, password: $p}' |
  "$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.UserService/CreateUser |
  jq -r .user.id)

# Roles can also be given at creation ("roles": [...]); AssignRole gives one
# later. Either way the caller must hold every permission the role holds.
jq -n --arg id "$USER_ID" --arg role "$ROLE" '{userId: $id, role: $role}' |
  "$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.RoleService/AssignRole >/dev/null

jq -n --arg id "$USER_ID" '{id: $id}' |
  "$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.UserService/GetUser |
  jq -c '.user | {id, username, email, roles: (.roles // [])}'
