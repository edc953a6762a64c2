#!/usr/bin/env bash
# Creates an API key for a worker or a script and prints its secret (shown
# once: keep it in your secret store). Use it instead of a token:
#   export TOKEN=$(TOKEN=… examples/grpcurl/api-key.sh "nightly backups" jobs:read jobs:write)
#   grpcurl -plaintext -H "authorization: Bearer $TOKEN" … JobService/CreateJob
# Its permissions must be ones you hold; it never acts above its owner's
# roles, and RevokeApiKey stops it at the next call.
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
NAME=${1:?name, then permissions}
shift
[ $# -gt 0 ] || { echo "name at least one permission, e.g. jobs:execute" >&2; exit 2; }

jq -n --arg name "$NAME" '{name: $name, permissions: $ARGS.positional}' --args "$@" |
  "$GRPCURL" "${tls[@]}" -H "authorization: Bearer $TOKEN" -d @ "$ADDR" \
    automation.v1.ApiKeyService/CreateApiKey |
  jq -r .secret
