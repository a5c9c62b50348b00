#!/usr/bin/env bash
# Installs what the demo, the test suite and CI need and the machine lacks: cmake,
# pkg-config and libssl-dev (librdkafka is built from source), Java and Maven (the local
# Kafka broker, deploy/local/kafka.sh), kcat and curl (the tests), Prometheus and
# promtool (the metrics and alert rule checks), the Python packages
# standardwebhooks and schemathesis (the tests) and kubernetes-validate (the
# manifests), Node.js with npm and the example receivers' npm packages
# (examples/receivers/typescript: standardwebhooks and typescript, from its
# package-lock.json). A Rust toolchain is
# expected. apt-get runs only when something is missing, through sudo when not root;
# without apt-get (or without root and sudo) it says what to install and fails.
#
#   scripts/setup.sh
set -euo pipefail

log() { printf 'setup.sh: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
  log "cargo not found: install a Rust toolchain (https://rustup.rs)"
  exit 1
fi

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v kcat >/dev/null || missing+=(kcat)
command -v curl >/dev/null || missing+=(curl)
# promtool checks every binary's /metrics and the alert rules; the Prometheus server
# of the same package scrapes a real run in the end-to-end tests.
command -v promtool >/dev/null || missing+=(prometheus)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
# The TypeScript example receiver (docs/receivers.md) runs on Node.js, 18 or later.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
root=$(cd "$(dirname "$0")/.." && pwd)

# Into the system Python, as the other packages; Debian's refuses without
# --break-system-packages (PEP 668).
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$@"
}
# The official Standard Webhooks library for Python, as the Python example receiver's
# requirements pin it: the end-to-end tests check with it that rotated deliveries
# verify with either secret, and run that receiver (tests/tests/e2e/receivers.rs).
install_standardwebhooks() {
  python3 -c 'import standardwebhooks' 2>/dev/null && return 0
  log "installing the Python package standardwebhooks"
  pip_install -r "$root/examples/receivers/python/requirements.txt"
}
# kubernetes-validate checks deploy/kubernetes against the Kubernetes API schemas it
# ships (scripts/check-deploy.sh), with no cluster and no download at check time.
install_kubernetes_validate() {
  command -v kubernetes-validate >/dev/null && return 0
  log "installing the Python package kubernetes-validate"
  pip_install kubernetes-validate
}
# schemathesis (PyPI): the end-to-end tests run it against the running ingest, with
# the OpenAPI document it serves (tests/tests/e2e/openapi.rs).
install_schemathesis() {
  python3 -c 'import schemathesis' 2>/dev/null && return 0
  log "installing the Python package schemathesis"
  pip_install schemathesis
}
# The npm packages of the TypeScript example receiver (tests/tests/e2e/receivers.rs runs it
# against the pipeline), exactly as its package-lock.json pins them, again whenever the
# lock file is newer than what was installed.
npm_ci() {
  local dir=$1 what=$2
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    log "installing $what's npm packages (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
# ... and the dashboard schema check's (scripts/check-deploy.sh type-checks the Grafana
# dashboard against @grafana/schema).
install_npm_packages() {
  npm_ci "$root/examples/receivers/typescript" "the TypeScript example receiver"
  npm_ci "$root/deploy/grafana/schema-check" "the dashboard schema check"
}
if [ ${#missing[@]} -eq 0 ]; then
  install_standardwebhooks
  install_npm_packages
  install_kubernetes_validate
  install_schemathesis
  exit 0
fi

# Debian/Ubuntu package names; elsewhere the operator installs the equivalents.
if ! command -v apt-get >/dev/null; then
  log "missing: ${missing[*]} (Debian package names); install them with your package manager"
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null; then
  as_root() { sudo "$@"; }
else
  log "missing: ${missing[*]}; not root and no sudo: run 'apt-get install ${missing[*]}' as root"
  exit 1
fi
log "installing ${missing[*]}"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
install_standardwebhooks
install_kubernetes_validate
install_schemathesis
install_npm_packages
