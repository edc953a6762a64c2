#!/usr/bin/env bash
# Attempt history: a worker (grpcurl on the Work stream) fails a job once and
# completes it on the retry; ListJobAttempts shows both attempts with their
# worker, times and outcome. A job that never ran has none.
#   TOKEN=… examples/grpcurl/attempts.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
# One line per attempt; proto3 JSON leaves an empty list out, so a job
# without attempts answers `{}`: "none".
attempts() {
  call JobService/ListJobAttempts '{"jobId": "'"$1"'"}' |
    jq -r '(.attempts // []) | if length == 0 then "none" else .[] |
      "\(.attempt) \(.outcome | sub("JOB_ATTEMPT_OUTCOME_"; "")) \(.workerId // "-") \(.errorMessage // "")"
    end'
}

JOB=$(call JobService/CreateJob '{"name": "report.render", "maxAttempts": 3}' | jq -r .job.id)
echo "before: $(attempts "$JOB")"

# A worker taking report.render jobs, on a stream of its own.
work=$(mktemp -d)
trap 'kill "$worker" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/in"
exec 3<>"$work/in"
"$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.JobService/Work <&3 >"$work/out" &
worker=$!
echo '{"hello": {"workerId": "grpcurl-attempts", "jobNames": ["report.render"], "maxConcurrency": 1}}' >&3
# The attempt number of the nth assignment of the job, once it arrives.
assigned() {
  for _ in $(seq 100); do
    n=$(jq -r 'select(.assignment) | .assignment.attempt' "$work/out" 2>/dev/null | sed -n "$1p")
    [ -n "$n" ] && { echo "$n"; return; }
    sleep 0.1
  done
  echo "no assignment $1 reached the worker:" >&2; cat "$work/out" >&2; exit 1
}
lease() { echo '{"jobId": "'"$JOB"'", "attempt": '"$1"'}'; }

FIRST=$(assigned 1)
echo "running: $(attempts "$JOB")"
echo '{"failure": {"lease": '"$(lease "$FIRST")"', "message": "renderer crashed"}}' >&3
# Retried after a backoff; the second attempt completes.
SECOND=$(assigned 2)
echo '{"completion": {"lease": '"$(lease "$SECOND")"', "result": {"pages": 12}}}' >&3
for _ in $(seq 100); do
  [ "$(call JobService/GetJob '{"id": "'"$JOB"'"}' | jq -r .job.status)" = JOB_STATUS_COMPLETED ] && break
  sleep 0.1
done
echo "after:"
attempts "$JOB"
