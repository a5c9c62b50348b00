#!/usr/bin/env bash
# Checks the deployment files a clean clone ships, with no cluster and no network:
#   - the Kubernetes manifests (deploy/kubernetes) against the Kubernetes API schemas,
#     strictly (unknown fields refused), with kubernetes-validate (PyPI; its schemas
#     ship in the package; scripts/setup.sh installs it);
#   - the Grafana dashboards against Grafana's own dashboard and panel schemas
#     (deploy/grafana/schema-check, npm @grafana/schema; scripts/setup.sh installs it);
#   - the Prometheus config and alert rules with promtool (and the rules' unit tests);
#   - docker-compose.yml against the binaries and the Prometheus config (ports, probes,
#     the credentials ingest and delivery need, the shutdown grace, mounted rules and
#     dashboards);
#   - that every HOOKLINE_* setting the manifests and docker-compose.yml set is one
#     docs/configuration.md documents (so a renamed setting cannot linger there).
#
#   scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
echo "== Kubernetes manifests (kubernetes-validate --strict)"
manifests=(deploy/kubernetes/*.yaml)
# The kustomization is kustomize's own kind, not an API object.
to_check=()
for file in "${manifests[@]}"; do
  [ "$(basename "$file")" = kustomization.yaml ] || to_check+=("$file")
done
kubernetes-validate --strict --quiet "${to_check[@]}" || status=1
# Every resource the kustomization lists exists.
for resource in $(awk '/^resources:/ { on = 1; next } on && /^  - / { print $2 } on && !/^  - / { on = 0 }' deploy/kubernetes/kustomization.yaml); do
  [ -f "deploy/kubernetes/$resource" ] || { echo "kustomization lists missing $resource"; status=1; }
done

echo "== Grafana dashboards against Grafana's schema (@grafana/schema, type-checked)"
node deploy/grafana/schema-check/check.mjs || status=1

echo "== Prometheus config and alert rules (promtool)"
promtool check config deploy/prometheus/prometheus.yml || status=1
(cd deploy/prometheus && promtool test rules alerts_test.yml) || status=1

echo "== Kubernetes manifests consistent with the binaries"
python3 - <<'PY' || status=1
import glob, re, sys, yaml

docs = [d for f in sorted(glob.glob("deploy/kubernetes/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
problems = []
for name, port in (("hookline-ingest", 8080), ("hookline-router", 8081), ("hookline-delivery", 8082)):
    w = workloads.get(name)
    if w is None:
        problems.append(f"no workload {name}")
        continue
    pod = w["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("HOOKLINE_HTTP_ADDR", {}).get("value") != f"0.0.0.0:{port}":
        problems.append(f"{name}: HOOKLINE_HTTP_ADDR is not 0.0.0.0:{port}")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append(f"{name}: liveness probe is not /healthz")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append(f"{name}: readiness probe is not /readyz")
    if "requests" not in c.get("resources", {}):
        problems.append(f"{name}: no resource requests")
    secret = any("secretRef" in e for e in c.get("envFrom", []))
    if secret != (name != "hookline-router"):
        problems.append(f"{name}: the hookline Secret goes to ingest and delivery only")
    if not any(d["kind"] == "PodDisruptionBudget" and d["spec"]["selector"]["matchLabels"] == w["spec"]["selector"]["matchLabels"] for d in docs):
        problems.append(f"{name}: no PodDisruptionBudget")
delivery = workloads["hookline-delivery"]["spec"]["template"]["spec"]
env = {e["name"]: e.get("value") for e in delivery["containers"][0].get("env", [])}
grace = int(re.fullmatch(r"(\d+)s", env.get("HOOKLINE_SHUTDOWN_GRACE", "30s")).group(1))
if delivery.get("terminationGracePeriodSeconds", 30) <= grace:
    problems.append("hookline-delivery: terminationGracePeriodSeconds must exceed HOOKLINE_SHUTDOWN_GRACE")
router = workloads["hookline-router"]
ids = {e["name"]: e for e in router["spec"]["template"]["spec"]["containers"][0].get("env", [])}
if router["kind"] != "StatefulSet" or ids.get("HOOKLINE_ROUTER_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
    problems.append("hookline-router: a StatefulSet whose HOOKLINE_ROUTER_INSTANCE_ID is the pod name")
if not any(d["kind"] == "HorizontalPodAutoscaler" and d["spec"]["scaleTargetRef"]["name"] == "hookline-delivery" for d in docs):
    problems.append("no HorizontalPodAutoscaler for hookline-delivery")
for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
PY

echo "== docker-compose.yml consistent with the binaries and the Prometheus config"
# No Docker daemon needed: the file is read as YAML (PyYAML comes with
# kubernetes-validate).
python3 - <<'PY' || status=1
import re, sys, yaml

compose = yaml.safe_load(open("docker-compose.yml"))
prometheus = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
services = compose["services"]
problems = []

def seconds(text):
    match = re.fullmatch(r"(\d+)s", str(text))
    return int(match.group(1)) if match else None

ports = {}
for name in ("ingest", "router", "delivery"):
    service = services[name]
    env = service.get("environment", {})
    port = env.get("HOOKLINE_HTTP_ADDR", "").rsplit(":", 1)[-1]
    ports[name] = port
    published = [p.rsplit(":", 1)[-1] for p in service.get("ports", [])]
    if port not in published:
        problems.append(f"{name}: HOOKLINE_HTTP_ADDR port {port} is not published ({published})")
    probe = " ".join(service.get("healthcheck", {}).get("test", []))
    if f"/dev/tcp/127.0.0.1/{port}" not in probe or "/readyz" not in probe:
        problems.append(f"{name}: the healthcheck does not ask /readyz on port {port}")
if "HOOKLINE_ADMIN_TOKEN" not in services["ingest"]["environment"]:
    problems.append("ingest: no HOOKLINE_ADMIN_TOKEN (it refuses to start without one)")
keys = [services[n]["environment"].get("HOOKLINE_SECRETS_KEYS") for n in ("ingest", "delivery")]
if keys[0] is None or keys[0] != keys[1]:
    problems.append("ingest and delivery must share HOOKLINE_SECRETS_KEYS")
if "HOOKLINE_SECRETS_KEYS" in services["router"]["environment"]:
    problems.append("router: holds no key, must not get HOOKLINE_SECRETS_KEYS")
grace = seconds(services["delivery"]["environment"].get("HOOKLINE_SHUTDOWN_GRACE", "30s"))
stop = seconds(services["delivery"].get("stop_grace_period", "10s"))
if grace is None or stop is None or stop <= grace:
    problems.append(f"delivery: stop_grace_period {stop}s must exceed HOOKLINE_SHUTDOWN_GRACE {grace}s")
targets = {
    job["job_name"]: job["static_configs"][0]["targets"][0]
    for job in prometheus["scrape_configs"]
}
for name, port in ports.items():
    if targets.get(f"hookline-{name}") != f"{name}:{port}":
        problems.append(f"prometheus.yml: job hookline-{name} should scrape {name}:{port}")
mounts = " ".join(services["prometheus"].get("volumes", []))
for rule_file in prometheus.get("rule_files", []):
    if f"/etc/prometheus/{rule_file}" not in mounts:
        problems.append(f"prometheus: rule file {rule_file} is not mounted")
mounts = " ".join(services["grafana"].get("volumes", []))
for path in ("deploy/grafana/provisioning/dashboards", "deploy/grafana/dashboards"):
    if path not in mounts:
        problems.append(f"grafana: {path} is not mounted")
for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
PY

echo "== settings named by the deployment files are documented"
for name in $(grep -ohE 'HOOKLINE_[A-Z0-9_]+' docker-compose.yml deploy/kubernetes/*.yaml | sort -u); do
  grep -q "\`$name\`" docs/configuration.md || { echo "$name is set but not in docs/configuration.md"; status=1; }
done
exit "$status"
