#!/usr/bin/env bash
# The demo: a local Kafka broker, the three Hookline binaries, a receiver that verifies
# signatures, demo subscriptions for two tenants and sample finance events. Shows the
# signed deliveries arriving; Ctrl-C stops everything it started.
#
#   scripts/demo.sh           run until Ctrl-C
#   scripts/demo.sh --check   exit 0 once every expected delivery arrived (CI smoke)
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
[ "${1:-}" = "--check" ] && check=true

export HOOKLINE_KAFKA_PORT=${HOOKLINE_KAFKA_PORT:-9092}
export HOOKLINE_KAFKA_BROKERS=127.0.0.1:$HOOKLINE_KAFKA_PORT
# A fresh topic prefix per run, so each demo starts from empty topics.
export HOOKLINE_TOPIC_PREFIX=${HOOKLINE_TOPIC_PREFIX:-demo-$(date +%s).}
# The demo receiver listens on loopback, which deliveries refuse unless allow-listed.
export HOOKLINE_DELIVERY_ALLOW_CIDRS=127.0.0.0/8
# Ingest refuses to run without an admin credential: a random one per run (or yours).
# The demo client (hookline-demo) reads the same variable.
export HOOKLINE_ADMIN_TOKEN=${HOOKLINE_ADMIN_TOKEN:-demo-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
# The local receiver speaks plain http, which is refused unless allowed.
export HOOKLINE_DELIVERY_ALLOW_HTTP=true
# Secrets at rest are sealed with this key: a fresh one per run unless given.
export HOOKLINE_SECRETS_KEYS=${HOOKLINE_SECRETS_KEYS:-local:$(head -c 32 /dev/urandom | base64)}
ingest_addr=127.0.0.1:${HOOKLINE_DEMO_INGEST_PORT:-8080}
router_addr=127.0.0.1:${HOOKLINE_DEMO_ROUTER_PORT:-8081}
delivery_addr=127.0.0.1:${HOOKLINE_DEMO_DELIVERY_PORT:-8082}
receiver_addr=127.0.0.1:${HOOKLINE_DEMO_RECEIVER_PORT:-9000}
logs=.hookline/demo
mkdir -p "$logs"

pids=()
started_kafka=false
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "== stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if $started_kafka; then deploy/local/kafka.sh stop || true; fi
}
trap cleanup INT TERM EXIT

echo "== Kafka (single-node KRaft on 127.0.0.1:$HOOKLINE_KAFKA_PORT)"
if ! deploy/local/kafka.sh status 2>/dev/null; then
  deploy/local/kafka.sh start
  started_kafka=true
fi

echo "== building"
cargo build --bins --quiet
bin=target/debug

wait_ready() {
  for _ in $(seq 1 600); do
    if curl -fsS "http://$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not become ready; see $logs/$2.log" >&2
  exit 1
}

start() {
  local name=$1 addr=$2
  HOOKLINE_HTTP_ADDR=$addr "$bin/$name" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  wait_ready "$addr" "$name"
  echo "   $name ready on http://$addr (log: $logs/$name.log)"
}

echo "== starting the pipeline (topic prefix $HOOKLINE_TOPIC_PREFIX)"
start hookline-ingest "$ingest_addr"
start hookline-router "$router_addr"
start hookline-delivery "$delivery_addr"

echo "== starting the demo receiver (verifies every Standard Webhooks signature)"
"$bin/hookline-demo" --ingest "http://$ingest_addr" receive --addr "$receiver_addr" >"$logs/receiver.log" 2>&1 &
pids+=($!)
# Show the receiver's lines as they come.
tail -n +1 -f "$logs/receiver.log" &
pids+=($!)
sleep 0.5

echo "== creating subscriptions and sending sample finance events"
"$bin/hookline-demo" --ingest "http://$ingest_addr" seed --receiver "http://$receiver_addr"
echo "== deliveries arriving:"

expected=6
for _ in $(seq 1 300); do
  got=$(grep -c 'signature verified' "$logs/receiver.log" || true)
  [ "$got" -ge "$expected" ] && break
  sleep 0.2
done
got=$(grep -c 'signature verified' "$logs/receiver.log" || true)
echo
echo "== $got of $expected expected deliveries arrived, every signature verified."
echo "   Metrics:  curl http://$ingest_addr/metrics   (ingest)"
echo "             curl http://$router_addr/metrics   (router)"
echo "             curl http://$delivery_addr/metrics   (delivery: hookline_delivery_*)"
echo "   Admin:    export HOOKLINE_ADMIN_TOKEN=$HOOKLINE_ADMIN_TOKEN   (this run's admin token)"
echo "   Try:      curl -X POST http://$ingest_addr/v1/events -H \"authorization: Bearer \$HOOKLINE_ADMIN_TOKEN\" -d '{\"type\":\"invoice.paid\",\"tenant\":\"acme\",\"data\":{\"invoice_id\":\"in_42\",\"amount_paid\":12500,\"currency\":\"EUR\"}}'"
echo "   A key:    curl -X POST http://$ingest_addr/v1/tenants/acme/api-keys -H \"authorization: Bearer \$HOOKLINE_ADMIN_TOKEN\" -d '{\"roles\":[\"events:publish\"]}'"
if $check; then
  [ "$got" -ge "$expected" ] || { echo "demo check failed" >&2; exit 1; }
  exit 0
fi
echo "   Ctrl-C stops everything."
wait "${pids[0]}"
