#!/usr/bin/env bash
# How much work an endpoint that stays down costs the delivery worker: the three
# binaries (from BIN_DIR, shipped defaults) on the broker at HOOKLINE_KAFKA_BROKERS, one
# subscription whose endpoint refuses connections, RATE events a second to it for
# MINUTES; every 30 s it prints the worker's circuit-open skips per second
# (hookline_delivery_attempts_total{outcome="circuit_open"}): each skip is a task
# taken up, refused by the open circuit and written to a retry tier again.
#
#   HOOKLINE_KAFKA_BROKERS=127.0.0.1:9092 scripts/breaker-churn.sh BIN_DIR [MINUTES] [RATE] [PORT_BASE]
#
# Ports PORT_BASE (ingest), +1 (router), +2 (delivery), +19 (the dead endpoint).
set -euo pipefail
bin=${1:?usage: breaker-churn.sh BIN_DIR [MINUTES] [RATE] [PORT_BASE]}
minutes=${2:-7} rate=${3:-20} base=${4:-18580}
: "${HOOKLINE_KAFKA_BROKERS:?set HOOKLINE_KAFKA_BROKERS (e.g. a broker of deploy/local/kafka.sh)}"
export HOOKLINE_TOPIC_PREFIX=churn-$(date +%s)-$base.
export HOOKLINE_DELIVERY_ALLOW_CIDRS=127.0.0.0/8 HOOKLINE_DELIVERY_ALLOW_HTTP=true
export HOOKLINE_ADMIN_TOKEN=churn-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export HOOKLINE_EVENT_VALIDATION=false
export HOOKLINE_SECRETS_KEYS=local:$(head -c 32 /dev/urandom | base64)
export RUST_LOG=warn
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
HOOKLINE_HTTP_ADDR=127.0.0.1:$base "$bin/hookline-ingest" >"$work/ingest.log" 2>&1 & pids+=($!)
HOOKLINE_HTTP_ADDR=127.0.0.1:$((base + 1)) "$bin/hookline-router" >"$work/router.log" 2>&1 & pids+=($!)
HOOKLINE_HTTP_ADDR=127.0.0.1:$((base + 2)) "$bin/hookline-delivery" >"$work/delivery.log" 2>&1 & pids+=($!)
for _ in $(seq 120); do
  curl -sf "127.0.0.1:$base/readyz" >/dev/null && curl -sf "127.0.0.1:$((base + 2))/readyz" >/dev/null && break
  sleep 1
done
auth="Authorization: Bearer $HOOKLINE_ADMIN_TOKEN"
curl -sf -H "$auth" -H 'content-type: application/json' "127.0.0.1:$base/v1/subscriptions" \
  -d "{\"tenant\":\"acme\",\"url\":\"http://127.0.0.1:$((base + 19))/down\",\"event_types\":[\"*\"]}" >/dev/null \
  || { echo "breaker-churn.sh: subscription not created; logs in $work" >&2; exit 1; }
skips() {
  curl -s "127.0.0.1:$((base + 2))/metrics" \
    | awk '/^hookline_delivery_attempts_total\{.*outcome="circuit_open"/ { s += $2 } END { printf "%d", s }'
}
(
  n=0
  end=$(($(date +%s) + minutes * 60))
  pause=$(awk -v r="$rate" 'BEGIN { print 1 / r }')
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -s -o /dev/null -H "$auth" -H 'content-type: application/json' "127.0.0.1:$base/v1/events" \
      -d "{\"type\":\"invoice.paid\",\"tenant\":\"acme\",\"data\":{\"n\":$n}}" &
    n=$((n + 1))
    sleep "$pause"
  done
  wait
) &
load=$!
start=$(date +%s) last=0 last_t=$start
while kill -0 "$load" 2>/dev/null; do
  sleep 30
  now=$(date +%s) total=$(skips)
  echo "t=$((now - start))s circuit-open skips: $total in all, $(((total - last) / (now - last_t)))/s in the last $((now - last_t)) s"
  last=$total last_t=$now
done
