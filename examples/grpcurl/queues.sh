#!/usr/bin/env bash
# Pause a queue (one job name; or a module's jobs with MODULE=…), show it in
# ListQueues, then resume it. Paused jobs stay PENDING; running ones finish.
#   TOKEN=… examples/grpcurl/queues.sh [job name]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
JOB=${1:-report.render}
if [ -n "${MODULE:-}" ]; then
  queue=$(jq -n --arg m "$MODULE" '{moduleName: $m}')
else
  queue=$(jq -n --arg j "$JOB" '{jobName: $j}')
fi

# proto3 JSON leaves out zeros, false and empty lists: hence the `//`
# defaults (and int64 figures come as strings).
jq -n --argjson q "$queue" '{queue: $q}' | call JobService/PauseQueue |
  jq -r '"paused: \(.pause.queue.jobName // .pause.queue.moduleName) holding \(.heldJobs // "0") jobs"'

# A job enqueued now waits too.
jq -n --arg j "$JOB" '{name: $j, payload: {from: "queues.sh"}}' | call JobService/CreateJob >/dev/null

show() {
  jq -n '{pageSize: 500}' | call JobService/ListQueues |
    jq -r --arg j "$JOB" '(.queues // [])[] | select(.name == $j) |
      "queue: \(.name) pending=\(.pendingCount // "0") scheduled=\(.scheduledCount // "0") running=\(.runningCount // "0") failed1h=\(.failedLastHourCount // "0") oldest=\(.oldestPendingAge // "-") paused=\(.paused // false) settling=\(.settling // false)"'
}
show

jq -n --argjson q "$queue" '{queue: $q}' | call JobService/ResumeQueue |
  jq -r '"resumed: \(.resumed // false), released \(.releasedJobs // "0") jobs"'
show
