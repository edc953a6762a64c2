#!/usr/bin/env bash
# The latest entries of the audit trail, one line each (needs audit:read);
# nothing at all when no entry matches.
#   TOKEN=… examples/grpcurl/audit.sh [action]   e.g. auth.login, modules.enable
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

jq -n --arg action "${1:-}" '{pageSize: 20, action: $action}' |
  "$GRPCURL" "${tls[@]}" -H "authorization: Bearer $TOKEN" -d @ "$ADDR" \
    automation.v1.AuditService/ListAuditLogs |
  jq -r '(.auditLogs // [])[] | "\(.createTime) \(.action) \(.outcome) \(.resource)"'
