#!/usr/bin/env bash
# Progress from a worker: a worker (grpcurl on the Work stream) reports how
# far a job has got, GetJob shows it, and the finished job keeps the last
# report.
#   TOKEN=… examples/grpcurl/progress.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
# A job's progress in one line; a job without any shows "none" (proto3 JSON
# leaves an unset message out).
shown() { jq -r '.job.progress // {} | if . == {} then "none"
  else "\(.percent // "-")% \(.message // "")" end'; }

JOB=$(call JobService/CreateJob '{"name": "video.encode", "payload": {"video": 7}}' | jq -r .job.id)
echo "before: $(call JobService/GetJob '{"id": "'"$JOB"'"}' | shown)"

# A worker taking video.encode jobs, on a stream of its own.
work=$(mktemp -d)
trap 'kill "$worker" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/in"
exec 3<>"$work/in"
"$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.JobService/Work <&3 >"$work/out" &
worker=$!
echo '{"hello": {"workerId": "grpcurl-progress", "jobNames": ["video.encode"], "maxConcurrency": 1}}' >&3
for _ in $(seq 50); do
  grep -q "$JOB" "$work/out" 2>/dev/null && break
  sleep 0.1
done
ATTEMPT=$(jq -r 'select(.assignment) | .assignment.attempt' "$work/out" | head -1)
[ -n "$ATTEMPT" ] || { echo "no assignment reached the worker:" >&2; cat "$work/out" >&2; exit 1; }
LEASE='{"jobId": "'"$JOB"'", "attempt": '"$ATTEMPT"'}'

# Progress is best effort and not acknowledged: the server keeps the latest
# and stores it at most once a second.
echo '{"progress": {"lease": '"$LEASE"', "percent": 40, "message": "encoding", "details": {"frames": 400}}}' >&3
for _ in $(seq 50); do
  now=$(call JobService/GetJob '{"id": "'"$JOB"'"}' | shown)
  [ "$now" != none ] && break
  sleep 0.1
done
echo "running: $now"

# The last report before the completion is stored with it.
echo '{"progress": {"lease": '"$LEASE"', "percent": 100, "message": "encoded"}}' >&3
echo '{"completion": {"lease": '"$LEASE"', "result": {"frames": 1000}}}' >&3
"$GRPCURL" "${tls[@]}" -max-time 60 "${auth[@]}" -d '{"id": "'"$JOB"'"}' "$ADDR" \
  automation.v1.JobService/WatchJob | jq -c . | tail -1 |
  jq -r '"finished: \(.job.status) \(.job.progress // {} | "\(.percent // "-")% \(.message // "")")"'
