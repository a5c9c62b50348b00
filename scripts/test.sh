#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests against a real single-node
# Kafka broker (started here on HOOKLINE_TEST_KAFKA_PORT, default 19092, and stopped
# again if this script started it) with the binaries running as processes. Installs
# what is missing first (scripts/setup.sh) and runs every test binary even when one
# fails (--no-fail-fast).
#
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

port=${HOOKLINE_TEST_KAFKA_PORT:-19092}
kafka() { HOOKLINE_KAFKA_PORT=$port deploy/local/kafka.sh "$@"; }

started_here=false
if ! kafka status 2>/dev/null; then
  kafka start
  started_here=true
fi
cleanup() { if $started_here; then kafka stop || true; fi; }
trap cleanup EXIT

echo "== building binaries"
cargo build --workspace --bins --locked
echo "== running tests (broker 127.0.0.1:$port)"
mkdir -p .hookline
summary=.hookline/test-output.log
status=0
HOOKLINE_TEST_KAFKA_BROKERS=127.0.0.1:$port cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$summary" || status=$?
cleanup
trap - EXIT
# One closing line for the whole run (cargo prints one per test binary), printed last.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$summary"
exit "$status"
