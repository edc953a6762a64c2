#!/usr/bin/env bash
# Pause a queue (one job name; or a module's jobs with MODULE=…), show it in
# ListQueues, then resume it. Paused jobs stay PENDING; running ones finish.
#   TOKEN=… examples/grpcurl/queues.sh [job name]
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
JOB=${1:-report.render}
auth=(-H "authorization: Bearer $TOKEN")
call() { "$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" "automation.v1.$1"; }
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
