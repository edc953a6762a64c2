#!/usr/bin/env bash
# Concurrency keys: three jobs of one key of maximum 1 and one job of
# another key; a worker of concurrency 3 receives one job of the busy key
# at a time, and the other key's job beside it. Then a rate limit: a bucket
# of 2 tokens an hour, three jobs naming it, two of which run. (PutRateLimit
# needs rate_limits:write: an admin's token.)
#   TOKEN=… examples/grpcurl/limits.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"

call JobService/PutRateLimit '{"rateLimit": {"name": "example-smtp", "units": 2, "interval": "3600s", "burst": 2}}' |
  jq -r '"bucket: \(.rateLimit.name) \(.rateLimit.units) per \(.rateLimit.interval)"'

call JobService/BatchCreateJobs '{"requests": [
  {"name": "invoice.send", "payload": {"n": 1}, "concurrencyKey": "customer-42", "concurrencyMax": 1},
  {"name": "invoice.send", "payload": {"n": 2}, "concurrencyKey": "customer-42", "concurrencyMax": 1},
  {"name": "invoice.send", "payload": {"n": 3}, "concurrencyKey": "customer-42", "concurrencyMax": 1},
  {"name": "invoice.send", "payload": {"n": 4}, "concurrencyKey": "customer-7", "concurrencyMax": 1},
  {"name": "invoice.send", "payload": {"n": 5}, "rateLimit": "example-smtp"},
  {"name": "invoice.send", "payload": {"n": 6}, "rateLimit": "example-smtp"},
  {"name": "invoice.send", "payload": {"n": 7}, "rateLimit": "example-smtp"}
]}' | jq -r '"created: \((.jobs // []) | length) jobs, keys \([(.jobs // [])[].concurrencyKey // empty] | unique | join(" "))"'

# A worker with room for ten jobs of invoice.send.
work=$(mktemp -d)
trap 'kill "$worker" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/in"
exec 3<>"$work/in"
"$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" automation.v1.JobService/Work <&3 >"$work/out" &
worker=$!
echo '{"hello": {"workerId": "grpcurl-limits", "jobNames": ["invoice.send"], "maxConcurrency": 10}}' >&3
assigned() {
  jq -r 'select(.assignment) | .assignment.job | (.concurrencyKey // .rateLimit // "none")' \
    "$work/out" 2>/dev/null || true
}
for _ in $(seq 50); do
  [ "$(assigned | wc -l)" -ge 4 ] && break
  sleep 0.1
done
sleep 0.5
echo "running at once: $(assigned | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
call JobService/ListJobs '{"status": "JOB_STATUS_PENDING", "name": "invoice.send"}' |
  jq -r '"waiting: \([(.jobs // [])[] | select(.concurrencyKey == "customer-42")] | length) of customer-42"'
call JobService/ListRateLimits '{}' |
  jq -r '(.rateLimits // [])[] | select(.name == "example-smtp") | "tokens left: \(.tokens | floor)"'
