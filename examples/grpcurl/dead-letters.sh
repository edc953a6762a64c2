#!/usr/bin/env bash
# The dead-letter view: FAILED jobs whose error message starts with a prefix
# (optionally of one job name), then all of them retried, a page of at most
# 1,000 per call, each page in one transaction.
#   TOKEN=… examples/grpcurl/dead-letters.sh 'error prefix' [job name]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/connect.sh"
: "${TOKEN:?set TOKEN (see login.sh)}"
PREFIX=${1:?an error message prefix, e.g. 'disk full'}
NAME=${2:-}
filter=$(jq -n --arg p "$PREFIX" --arg n "$NAME" \
  '{status: "JOB_STATUS_FAILED", errorMessagePrefix: $p} + (if $n == "" then {} else {name: $n} end)')

# List them, page by page (proto3 JSON leaves an empty list out: `// []`).
count=0 page=""
while :; do
  answer=$(jq -n --argjson f "$filter" --arg t "$page" '$f + {pageSize: 100, pageToken: $t}' |
    call JobService/ListJobs)
  jq -r '(.jobs // [])[] | "dead: \(.id) \(.name) \(.error.message // "")"' <<<"$answer"
  count=$((count + $(jq '(.jobs // []) | length' <<<"$answer")))
  page=$(jq -r '.nextPageToken // ""' <<<"$answer")
  [ -n "$page" ] || break
done
echo "dead letters: $count"

# Retry them all: the same filter, one page per call, until no page is left.
retried=0 page=""
while :; do
  answer=$(jq -n --argjson f "$filter" --arg t "$page" '{filter: $f, pageSize: 1000, pageToken: $t}' |
    call JobService/BatchRetryJobs)
  retried=$((retried + $(jq '(.jobs // []) | length' <<<"$answer")))
  page=$(jq -r '.nextPageToken // ""' <<<"$answer")
  [ -n "$page" ] || break
done
echo "retried: $retried"
