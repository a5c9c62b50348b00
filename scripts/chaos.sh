#!/usr/bin/env bash
# The fault-injection ledger (issue 10): builds the binaries, starts a three-node KRaft
# cluster with deploy/local/kafka.sh on HOOKLINE_CHAOS_KAFKA_PORT (default 49092; its
# nodes listen on that port, +2 and +4; in network namespaces when run as root) unless
# one already answers there (and stops it again at the end if it started it), then runs the chaos test target against it and
# exits with its status. The ledger's report is printed at the end of the test output.
#
#   scripts/chaos.sh [--size small|long]
#
# small (the default, for CI): about 5 minutes. long (for the figures in the docs):
# 15-20 minutes. Both run the binaries with their default Kafka settings.
set -euo pipefail
cd "$(dirname "$0")/.."

size=small
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=${2:?--size needs small or long}; shift 2 ;;
    --size=*) size=${1#--size=}; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (usage: scripts/chaos.sh [--size small|long])" >&2; exit 2 ;;
  esac
done
case "$size" in
  small|long) ;;
  *) echo "chaos.sh: --size is small or long, not $size" >&2; exit 2 ;;
esac

port=${HOOKLINE_CHAOS_KAFKA_PORT:-49092}
kafka() { HOOKLINE_KAFKA_PORT=$port HOOKLINE_KAFKA_NODES=3 deploy/local/kafka.sh "$@"; }

started_here=false
if ! kafka status 2>/dev/null; then
  # Network namespaces (root) let the ledger cut a broker off the network.
  if kafka can-netns; then
    kafka start --nodes 3 --netns
  else
    echo "== network namespaces not available here: the network partition is not staged"
    kafka start --nodes 3
  fi
  started_here=true
fi
cleanup() { if $started_here; then kafka stop || true; fi; }
trap cleanup EXIT

echo "== building binaries"
cargo build --workspace --bins --locked
echo "== chaos ledger, size $size (cluster $(kafka brokers))"
status=0
HOOKLINE_CHAOS_SIZE=$size HOOKLINE_TEST_KAFKA_CLUSTER_PORT=$port \
  cargo test -p hookline-e2e --locked --test chaos -- --nocapture --test-threads=1 || status=$?
exit "$status"
