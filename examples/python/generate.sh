#!/usr/bin/env bash
# Generates the Python stubs from proto/ into ${OUT:-examples/python/gen}
# (not committed: regenerate whenever the contract changes). Needs
#   pip install grpcio grpcio-tools grpcio-status
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/gen}
mkdir -p "$out"
${PYTHON:-python3} -m grpc_tools.protoc -I "$here/../../proto" \
  --python_out="$out" --grpc_python_out="$out" "$here"/../../proto/automation/v1/*.proto
echo "$out"
