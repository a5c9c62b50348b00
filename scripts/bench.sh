#!/usr/bin/env bash
# End-to-end benchmark: a local broker, the three binaries (release build, shipped
# defaults) on a fresh topic prefix, then hookline-bench, which runs a scenario
# (--scenario burst|paced|slow-endpoint|flaky-endpoint|many-subscriptions) --repeat
# times and reports per run deliveries/s, latency, per-stage percentiles and the CPU and
# memory of each binary and of the broker, next to the raw HTTP and Kafka limits.
#
#   scripts/bench.sh [hookline-bench flags, e.g. --scenario paced --repeat 3 --json]
#
# Environment:
#   HOOKLINE_BENCH_KAFKA_PORT  broker port (default 29092); the broker is started unless
#                              one already answers there, and stopped again if started
#   HOOKLINE_BENCH_PORT_BASE   ingest's port (default 18080); router +1, delivery +2
set -euo pipefail
cd "$(dirname "$0")/.."

export HOOKLINE_KAFKA_PORT=${HOOKLINE_BENCH_KAFKA_PORT:-29092}
export HOOKLINE_KAFKA_BROKERS=127.0.0.1:$HOOKLINE_KAFKA_PORT
export HOOKLINE_TOPIC_PREFIX=bench-$(date +%s).
# The shipped defaults, but for loopback being allowed (the receiver is local).
export HOOKLINE_DELIVERY_ALLOW_CIDRS=127.0.0.0/8
# Ingest refuses to run without an admin credential; hookline-bench sends the same one
# (it reads HOOKLINE_ADMIN_TOKEN too). The admin is not held to tenant quotas.
export HOOKLINE_ADMIN_TOKEN=${HOOKLINE_ADMIN_TOKEN:-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
# The local receiver speaks plain http, which is refused unless allowed.
export HOOKLINE_DELIVERY_ALLOW_HTTP=true
# The load mix sends one payment-shaped payload under 32 types, which the event
# catalog's schemas would refuse; the cost of validation is measured on its own
# (cargo bench -p hookline-domain --bench validation).
export HOOKLINE_EVENT_VALIDATION=${HOOKLINE_EVENT_VALIDATION:-false}
# Secrets at rest are sealed with this key: a fresh one per run unless given.
export HOOKLINE_SECRETS_KEYS=${HOOKLINE_SECRETS_KEYS:-local:$(head -c 32 /dev/urandom | base64)}
export RUST_LOG=warn
base=${HOOKLINE_BENCH_PORT_BASE:-18080}
ingest_addr=127.0.0.1:$base
router_addr=127.0.0.1:$((base + 1))
delivery_addr=127.0.0.1:$((base + 2))
logs=.hookline/bench-$base
mkdir -p "$logs"

pids=()
started_kafka=false
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if $started_kafka; then deploy/local/kafka.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if ! deploy/local/kafka.sh status 2>/dev/null; then
  deploy/local/kafka.sh start
  started_kafka=true
fi
# The broker's JVM, whose CPU and memory are reported with the binaries'.
broker_pidfile=${HOOKLINE_KAFKA_HOME:-.hookline/kafka-$HOOKLINE_KAFKA_PORT}/kafka.pid
broker_pid=$(cat "$broker_pidfile" 2>/dev/null || true)

cargo build --release --bins --locked --quiet
bin=target/release

start() {
  HOOKLINE_HTTP_ADDR=$2 "$bin/$1" >"$logs/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do
    curl -fsS "http://$2/readyz" >/dev/null 2>&1 && return 0
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "$1 not ready on $2; see $logs/$1.log" >&2
  exit 1
}
start hookline-ingest "$ingest_addr"
start hookline-router "$router_addr"
start hookline-delivery "$delivery_addr"

watch="ingest=${pids[0]},router=${pids[1]},delivery=${pids[2]}"
if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
  watch="$watch,broker=$broker_pid"
fi

"$bin/hookline-bench" \
  --ingest "http://$ingest_addr" \
  --router "http://$router_addr" \
  --delivery "http://$delivery_addr" \
  --pids "$watch" \
  --clock-ticks "$(getconf CLK_TCK)" \
  "$@"
