#!/usr/bin/env bash
# The latest entries of the audit trail, one line each (needs audit:read).
#   TOKEN=… examples/grpcurl/audit.sh [action]   e.g. auth.login, modules.enable
set -euo pipefail
ADDR=${ADDR:-127.0.0.1:50051}
GRPCURL=${GRPCURL:-grpcurl}
: "${TOKEN:?set TOKEN (see login.sh)}"

jq -n --arg action "${1:-}" '{pageSize: 20, action: $action}' |
  "$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" -d @ "$ADDR" \
    automation.v1.AuditService/ListAuditLogs |
  jq -r '.auditLogs[] | "\(.createTime) \(.action) \(.outcome) \(.resource)"'
