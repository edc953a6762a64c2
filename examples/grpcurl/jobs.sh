#!/usr/bin/env bash
# Enqueue jobs (one, then a batch), let a worker run one, and WatchJob it to
# the end; then list what is still pending.
#   TOKEN=… examples/grpcurl/jobs.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"

# Repeating this call with the same idempotencyKey returns the same job.
JOB=$(call JobService/CreateJob '{
  "name": "report.render", "payload": {"report": "weekly"}, "priority": 5,
  "idempotencyKey": "weekly-report-'"$(date +%G-W%V)"'"
}' | jq -r .job.id)
echo "created: $JOB"

call JobService/BatchCreateJobs '{"requests": [
  {"name": "thumbnail.make", "payload": {"image": 1}},
  {"name": "thumbnail.make", "payload": {"image": 2}}
]}' | jq -r '"batch: \(.jobs // [] | length) jobs"'

# A worker that takes only report.render jobs and completes the first.
work=$(mktemp -d)
trap 'kill "$worker" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/in"
exec 3<>"$work/in"
"$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.JobService/Work <&3 >"$work/out" &
worker=$!
echo '{"hello": {"workerId": "grpcurl-example", "jobNames": ["report.render"], "maxConcurrency": 1}}' >&3
for _ in $(seq 50); do
  grep -q "$JOB" "$work/out" 2>/dev/null && break
  sleep 0.1
done
ATTEMPT=$(jq -r 'select(.assignment) | .assignment.attempt' "$work/out" | head -1)
[ -n "$ATTEMPT" ] || { echo "no assignment reached the worker:" >&2; cat "$work/out" >&2; exit 1; }
echo '{"completion": {"lease": {"jobId": "'"$JOB"'", "attempt": '"$ATTEMPT"'}, "result": {"pages": 3}}}' >&3

# WatchJob: the job now, then each change; it ends when the job is finished
# (-max-time bounds the wait, in seconds).
"$GRPCURL" "${tls[@]}" -max-time 60 "${auth[@]}" -d '{"id": "'"$JOB"'"}' "$ADDR" \
  automation.v1.JobService/WatchJob | jq -r '"watch: \(.job.status)"' | tail -1

call JobService/ListJobs '{"status": "JOB_STATUS_PENDING", "name": "thumbnail.make"}' |
  jq -r '"pending thumbnails: \(.jobs // [] | length)"'
