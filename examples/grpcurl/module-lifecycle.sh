#!/usr/bin/env bash
# A module's whole life: register it with an install hook, enable it (a
# worker — here grpcurl itself, driven through a pipe — runs the hook job),
# wait for the install with WatchModule, disable it and delete it.
#   TOKEN=… examples/grpcurl/module-lifecycle.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
MODULE=${MODULE:-backup-runner}

call ModuleService/RegisterModule '{
  "name": "'"$MODULE"'", "version": "1.0.0", "displayName": "Backup runner",
  "manifest": {
    "jobs": [{"name": "backup.install", "max_attempts": 2},
             {"name": "backup.run", "priority": 10}],
    "hooks": {"install": "backup.install"}}
}' | jq -r '"registered: \(.module.name) \(.module.status)"'

call ModuleService/EnableModule '{"id": "'"$MODULE"'"}' | jq -r '"enabling: \(.module.status)"'

# The worker: one Work stream; what it sends is read from a pipe.
work=$(mktemp -d)
trap 'kill "$worker" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/in"
exec 3<>"$work/in"
"$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.JobService/Work <&3 >"$work/out" &
worker=$!
# It takes only this module's jobs, so other work in the queue is left alone.
echo '{"hello": {"workerId": "grpcurl-example", "moduleNames": ["'"$MODULE"'"], "maxConcurrency": 1}}' >&3
for _ in $(seq 50); do
  HOOK=$(jq -r 'select(.assignment) | .assignment.job.id' "$work/out" 2>/dev/null | head -1)
  [ -n "$HOOK" ] && break
  sleep 0.1
done
: "${HOOK:?the hook job never reached the worker}"
echo "worker: running hook job $HOOK"
echo '{"completion": {"lease": {"jobId": "'"$HOOK"'", "attempt": 1}, "result": {"installed": true}}}' >&3

# WatchModule ends once the module is out of its transition (-max-time
# bounds the wait, in seconds).
"$GRPCURL" "${tls[@]}" -max-time 60 "${auth[@]}" -d '{"id": "'"$MODULE"'"}' "$ADDR" \
  automation.v1.ModuleService/WatchModule | jq -r '"watch: \(.module.status)"' | tail -1

call ModuleService/DisableModule '{"id": "'"$MODULE"'"}' | jq -r '"disabled: \(.module.status)"'
call ModuleService/DeleteModule '{"id": "'"$MODULE"'"}' | jq -r '"deleted: \(.deleted)"'
