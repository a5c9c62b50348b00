#!/usr/bin/env bash
# A real run for the dashboard picture in docs/operations.md: the demo pipeline
# (scripts/demo.sh: a local Kafka, the three binaries, the demo receiver), a real
# Prometheus server scraping the three binaries with the shipped alert rules, subscriptions
# to a healthy endpoint, to one failing every other request (retries) and to one refusing
# connections (retries, then dead letters after the retry schedule), and a steady stream
# of invoice.paid events through the HTTP API; then scripts/render-dashboard.py draws the
# dashboard from that Prometheus.
#
#   scripts/dashboard-snapshot.sh [--minutes N] [--rate EVENTS_PER_SEC] [--out FILE]
#
# Needs promtool's server (Debian prometheus), matplotlib and requests (pip).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=6
rate=40
out=docs/img/dashboard.png
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

export HOOKLINE_ADMIN_TOKEN=snapshot-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export HOOKLINE_DEMO_INGEST_PORT=${HOOKLINE_DEMO_INGEST_PORT:-18080}
export HOOKLINE_DEMO_ROUTER_PORT=${HOOKLINE_DEMO_ROUTER_PORT:-18081}
export HOOKLINE_DEMO_DELIVERY_PORT=${HOOKLINE_DEMO_DELIVERY_PORT:-18082}
export HOOKLINE_DEMO_RECEIVER_PORT=${HOOKLINE_DEMO_RECEIVER_PORT:-19000}
prom_port=${HOOKLINE_SNAPSHOT_PROMETHEUS_PORT:-19095}
flaky_port=${HOOKLINE_SNAPSHOT_FLAKY_PORT:-19001}
ingest=http://127.0.0.1:$HOOKLINE_DEMO_INGEST_PORT
work=.hookline/snapshot
rm -rf "$work" && mkdir -p "$work"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

scripts/demo.sh >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 900); do
  grep -q "Ctrl-C stops everything" "$work/demo.log" && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/demo.log"; exit 1; }
  sleep 1
done
echo "== the demo pipeline is up"

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $PWD/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: hookline-ingest
    static_configs: [{targets: ["127.0.0.1:$HOOKLINE_DEMO_INGEST_PORT"]}]
  - job_name: hookline-router
    static_configs: [{targets: ["127.0.0.1:$HOOKLINE_DEMO_ROUTER_PORT"]}]
  - job_name: hookline-delivery
    static_configs: [{targets: ["127.0.0.1:$HOOKLINE_DEMO_DELIVERY_PORT"]}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

# An endpoint that fails every other request with a 500.
python3 - "$flaky_port" >"$work/flaky.log" 2>&1 <<'PY' &
import sys, itertools
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count = itertools.count()
class Flaky(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status = 500 if next(count) % 2 else 200
        self.send_response(status); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Flaky).serve_forever()
PY
pids+=($!)

api() {
  curl -fsS -X "$1" "$ingest$2" -H "authorization: Bearer $HOOKLINE_ADMIN_TOKEN" \
    -H 'content-type: application/json' ${3:+-d "$3"}
}
api POST /v1/subscriptions "{\"tenant\":\"acme\",\"url\":\"http://127.0.0.1:$flaky_port/hooks\",\"event_types\":[\"invoice.*\"],\"description\":\"flaky ERP\"}" >/dev/null
# Nothing listens there: every attempt is refused, retried on the schedule, then dead-lettered.
api POST /v1/subscriptions "{\"tenant\":\"globex\",\"url\":\"http://127.0.0.1:9/hooks\",\"event_types\":[\"invoice.*\"],\"description\":\"ERP down\"}" >/dev/null

echo "== sending about $rate events/s for $minutes min through $ingest/v1/events"
python3 - "$ingest" "$rate" "$minutes" <<'PY'
import json, os, sys, time, requests
ingest, rate, minutes = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
session = requests.Session()
session.headers["authorization"] = "Bearer " + os.environ["HOOKLINE_ADMIN_TOKEN"]
end, n, sent = time.time() + minutes * 60, 0, 0
batch = max(1, int(rate / 10))
while time.time() < end:
    events = []
    for _ in range(batch):
        n += 1
        events.append({"type": "invoice.paid", "tenant": ("acme", "globex")[n % 2],
                       "data": {"invoice_id": f"in_{n}", "amount_paid": 100 + n % 9000, "currency": "EUR"}})
    answer = session.post(f"{ingest}/v1/events", json=events, timeout=30)
    if answer.status_code == 202:
        sent += len(events)
    time.sleep(0.1)
print(f"sent {sent} events")
PY
sleep 30
mkdir -p "$(dirname "$out")"
python3 scripts/render-dashboard.py --prometheus "http://127.0.0.1:$prom_port" \
  --minutes "$(python3 -c "print($minutes + 1.5)")" --out "$out"
