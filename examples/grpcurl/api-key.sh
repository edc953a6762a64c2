#!/usr/bin/env bash
# Creates an API key for a worker or a script and prints its secret (shown
# once: keep it in your secret store). Use it instead of a token:
#   export TOKEN=$(TOKEN=… examples/grpcurl/api-key.sh "nightly backups" jobs:read jobs:write)
#   grpcurl -plaintext -H "authorization: Bearer $TOKEN" … JobService/CreateJob
# Its permissions must be ones you hold; it never acts above its owner's
# roles, and RevokeApiKey stops it at the next call.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
NAME=${1:?name, then permissions}
shift
[ $# -gt 0 ] || { echo "name at least one permission, e.g. jobs:execute" >&2; exit 2; }

jq -n --arg name "$NAME" '{name: $name, permissions: $ARGS.positional}' --args "$@" |
  call ApiKeyService/CreateApiKey |
  jq -r .secret
