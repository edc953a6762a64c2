#!/usr/bin/env bash
# A schedule: create one that fires every 2 seconds, run it now, see its
# jobs (ListJobs by schedule), move it to 03:00 Paris time, pause it, list
# and delete it.
#   TOKEN=… examples/grpcurl/schedules.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"

# Six fields: seconds first. SKIP: a fire time makes no job while the
# previous one is unfinished.
ID=$(call ScheduleService/CreateSchedule '{
  "name": "heartbeat-example", "cronExpression": "*/2 * * * * *", "timeZone": "UTC",
  "jobTemplate": {"name": "heartbeat.ping", "payload": {"source": "grpcurl"}},
  "overlapPolicy": "OVERLAP_POLICY_ALLOW", "missedFirePolicy": "MISSED_FIRE_POLICY_SKIP"
}' | jq -r '.schedule | "\(.id)"')
echo "created: heartbeat-example $ID"

# Run it now: one more job, not a fire time.
call ScheduleService/TriggerSchedule '{"id": "heartbeat-example"}' |
  jq -r '"triggered: \(.job.name) of \(.job.scheduleId)"'

# Wait for a fire time's job beside the triggered one.
count=0
for _ in $(seq 50); do
  count=$(call JobService/ListJobs '{"scheduleId": "'"$ID"'"}' | jq '(.jobs // []) | length')
  [ "$count" -ge 2 ] && break
  sleep 0.2
done
echo "jobs of the schedule: $([ "$count" -ge 2 ] && echo "at least 2" || echo "$count")"

call ScheduleService/UpdateSchedule '{
  "schedule": {"id": "heartbeat-example", "cronExpression": "0 3 * * *", "timeZone": "Europe/Paris"},
  "updateMask": {"paths": ["cron_expression", "time_zone"]}
}' | jq -r '.schedule | "updated: \(.cronExpression) \(.timeZone) next \(.nextFireTime)"'

call ScheduleService/PauseSchedule '{"id": "heartbeat-example"}' |
  jq -r '.schedule | "paused: \(.paused // false)"'

call ScheduleService/GetSchedule '{"id": "heartbeat-example"}' |
  jq -r '.schedule | "last job: \(.lastJobId // "none")"'

call ScheduleService/ListSchedules '{}' |
  jq -r '"schedules: \([(.schedules // [])[].name] | join(", "))"'
# proto3 JSON leaves an empty list out: `// []` reads it as empty.
call ScheduleService/ListSchedules '{"moduleName": "no-such-module"}' |
  jq -r '"schedules of no-such-module: \((.schedules // []) | length)"'

call ScheduleService/DeleteSchedule '{"id": "heartbeat-example"}' >/dev/null
echo "deleted: heartbeat-example"
