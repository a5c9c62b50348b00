#!/usr/bin/env bash
# End-to-end benchmark: a local broker, the three binaries (release build) on a fresh
# topic prefix, then hookline-bench (deliveries/s, latency, raw HTTP and Kafka limits).
#
#   scripts/bench.sh [hookline-bench flags, e.g. --events 50000 --subscriptions 4 --json]
#
# Events go through the HTTP API by default (--via kafka produces them straight to the
# events topic); the binaries run with their shipped defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

export HOOKLINE_KAFKA_PORT=${HOOKLINE_BENCH_KAFKA_PORT:-29092}
export HOOKLINE_KAFKA_BROKERS=127.0.0.1:$HOOKLINE_KAFKA_PORT
export HOOKLINE_TOPIC_PREFIX=bench-$(date +%s).
# The shipped defaults, but for loopback being allowed (the receiver is local).
export HOOKLINE_DELIVERY_ALLOW_CIDRS=127.0.0.0/8
export RUST_LOG=warn
logs=.hookline/bench
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
cargo build --release --bins --locked --quiet
bin=target/release

start() {
  HOOKLINE_HTTP_ADDR=$2 "$bin/$1" >"$logs/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do
    curl -fsS "http://$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 not ready; see $logs/$1.log" >&2
  exit 1
}
start hookline-ingest 127.0.0.1:18080
start hookline-router 127.0.0.1:18081
start hookline-delivery 127.0.0.1:18082

"$bin/hookline-bench" --ingest http://127.0.0.1:18080 "$@"

# Peak resident memory and CPU time of each binary over the whole run (start-up,
# raw-limit measurements and the end-to-end run), from /proc.
ticks=$(getconf CLK_TCK)
echo "per binary, whole run (peak RSS from VmHWM; CPU = user + system time):"
names=(hookline-ingest hookline-router hookline-delivery)
for i in "${!names[@]}"; do
  pid=${pids[$i]}
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  cpu=$(awk -v t="$ticks" '{printf "%.1f", ($14 + $15) / t}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  printf '  %-18s peak RSS %6d MiB   CPU %7s s\n' "${names[$i]}" $((hwm / 1024)) "$cpu"
done
