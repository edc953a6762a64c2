#!/usr/bin/env bash
# The latest entries of the audit trail, one line each (needs audit:read);
# nothing at all when no entry matches.
#   TOKEN=… examples/grpcurl/audit.sh [action]   e.g. auth.login, modules.enable
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"

jq -n --arg action "${1:-}" '{pageSize: 20, action: $action}' |
  call AuditService/ListAuditLogs |
  jq -r '(.auditLogs // [])[] | "\(.createTime) \(.action) \(.outcome) \(.resource)"'
