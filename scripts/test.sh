#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests against a real single-node
# Kafka broker (started here on HOOKLINE_TEST_KAFKA_PORT, default 19092, and stopped
# again if this script started it) with the binaries running as processes, then the
# broker-failure tests on a real three-node cluster (started on
# HOOKLINE_TEST_KAFKA_CLUSTER_PORT, default 19192, once the single broker is stopped:
# they kill its nodes; in network namespaces when run as root, so that one can be cut
# off the network), then the fault-injection ledger (scripts/chaos.sh --size small) on
# the same cluster. Before the tests, scripts/check-deploy.sh validates the Kubernetes
# manifests and checks and unit-tests the alert rules (deploy/prometheus/alerts.yml); the end-to-end tests run promtool on every binary's
# /metrics and a real Prometheus server against a run (tests/e2e/observability.rs). Installs what is missing first (scripts/setup.sh) and runs every
# test binary even when one fails (--no-fail-fast).
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
mkdir -p .hookline
summary=.hookline/test-output.log
status=0
# The deployment files: Kubernetes manifests, Prometheus config, alert rules and their
# unit tests, settings named there documented.
scripts/check-deploy.sh || status=$?
echo "== running tests (broker 127.0.0.1:$port)"
HOOKLINE_TEST_KAFKA_BROKERS=127.0.0.1:$port cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$summary" || status=$?
cleanup
trap - EXIT

cluster_port=${HOOKLINE_TEST_KAFKA_CLUSTER_PORT:-19192}
cluster() { HOOKLINE_KAFKA_PORT=$cluster_port deploy/local/kafka.sh "$@"; }
cluster_started_here=false
if ! cluster status 2>/dev/null; then
  # In network namespaces where this machine allows it (root), so that a broker can be
  # cut off the network; the partition test must then run (HOOKLINE_TEST_REQUIRE_NETNS).
  if cluster can-netns; then
    cluster start --nodes 3 --netns
    export HOOKLINE_TEST_REQUIRE_NETNS=1
  else
    echo "== network namespaces not available here: the network-partition test is not staged"
    cluster start --nodes 3
  fi
  cluster_started_here=true
fi
cluster_cleanup() { if $cluster_started_here; then cluster stop || true; fi; }
trap cluster_cleanup EXIT
echo "== broker-failure tests (three-node cluster $(cluster brokers))"
HOOKLINE_TEST_KAFKA_CLUSTER_PORT=$cluster_port cargo test -p hookline-e2e --test cluster --locked \
  -- --test-threads=1 --nocapture 2>&1 | tee -a "$summary" || status=$?
echo "== fault-injection ledger, small (same cluster)"
HOOKLINE_CHAOS_KAFKA_PORT=$cluster_port scripts/chaos.sh --size small 2>&1 | tee -a "$summary" || status=$?
cluster_cleanup
trap - EXIT
# One closing line for the whole run (cargo prints one per test binary), printed last.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$summary"
exit "$status"
