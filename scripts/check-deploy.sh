#!/usr/bin/env bash
# Checks the deployment files a clean clone ships, with no cluster and no network:
#   - the Kubernetes manifests (deploy/kubernetes) against the Kubernetes API schemas,
#     strictly (unknown fields refused), with kubernetes-validate (PyPI; its schemas
#     ship in the package; scripts/setup.sh installs it);
#   - the Prometheus config and alert rules with promtool (and the rules' unit tests);
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

echo "== Prometheus config and alert rules (promtool)"
promtool check config deploy/prometheus/prometheus.yml || status=1
(cd deploy/prometheus && promtool test rules alerts_test.yml) || status=1

echo "== settings named by the deployment files are documented"
for name in $(grep -ohE 'HOOKLINE_[A-Z0-9_]+' docker-compose.yml deploy/kubernetes/*.yaml | sort -u); do
  grep -q "\`$name\`" docs/configuration.md || { echo "$name is set but not in docs/configuration.md"; status=1; }
done
exit "$status"
