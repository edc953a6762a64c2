#!/usr/bin/env bash
# The dead-letter view: FAILED jobs whose error message starts with a prefix
# (optionally of one job name), then all of them retried, a page of at most
# 1,000 per call, each page in one transaction.
#   TOKEN=… examples/grpcurl/dead-letters.sh 'error prefix' [job name]
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
PREFIX=${1:?an error message prefix, e.g. 'disk full'}
NAME=${2:-}
auth=(-H "authorization: Bearer $TOKEN")
call() { "$GRPCURL" "${tls[@]}" "${auth[@]}" -d @ "$ADDR" "automation.v1.$1"; }
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
