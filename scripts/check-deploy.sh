#!/usr/bin/env bash
# Checks what can be checked of the deployment artefacts without a Docker engine
# or a cluster, with the real tools: kustomize, the API's schemas, the CRDs'
# schemas, promtool. Used by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fail() { echo "check-deploy: $*" >&2; exit 1; }

# --- Kubernetes manifests: every kustomization rendered by a real kustomize
# (kubectl's), the output validated strictly: Kubernetes kinds against the
# API's schemas (kubernetes-validate), custom resources (cert-manager, KEDA,
# Prometheus Operator) against their CRDs' schemas (scripts/deploy-check),
# then the rules that make them safe to apply (scripts/deploy-check/safety.py).
command -v kubectl >/dev/null 2>&1 || fail "kubectl (with its kustomize) is needed: apt-get install kubectl"
command -v kubernetes-validate >/dev/null 2>&1 || pip install -q kubernetes-validate
(cd scripts/deploy-check && npm ci --silent --no-audit --no-fund)
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for dir in $(find k8s -name kustomization.yaml -printf '%h\n' | sort); do
  kubectl kustomize "$dir" > "$rendered/$(echo "$dir" | tr / -).yaml" || fail "kustomize cannot render $dir"
done
# shellcheck disable=SC2046
kubernetes-validate --strict --quiet --no-warn $(ls "$rendered"/*.yaml) || fail "a rendered manifest is not valid Kubernetes"
node scripts/deploy-check/crds.mjs "$rendered"/*.yaml || fail "a custom resource does not match its CRD"
python3 scripts/deploy-check/safety.py "$rendered"

# --- Alerts: promtool checks the rules and runs their unit tests
# (k8s/observability/alerts.test.yaml: each alert fires on the series that
# should fire it, and stays quiet otherwise).
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
rules=$(mktemp -d)
python3 - "$rules/rules.yaml" <<'PY'
import sys, yaml
rule = yaml.safe_load(open("k8s/observability/prometheus-rule.yaml"))
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(sys.argv[1], "w"), sort_keys=False)
PY
cp k8s/observability/alerts.test.yaml "$rules/"
promtool check rules "$rules/rules.yaml" >/dev/null || fail "promtool rejects the alert rules"
(cd "$rules" && promtool test rules alerts.test.yaml) || fail "the alerts' unit tests fail"
rm -rf "$rules"
python3 -c 'import json; d = json.load(open("k8s/observability/dashboard.json")); assert d["panels"] and all(p["targets"] for p in d["panels"])' \
  || fail "the dashboard is not a Grafana dashboard with queries"

# --- Dockerfile: the binary it copies is what `cargo build --release` makes.
grep -q 'cargo build --release --locked --bin middleway' Dockerfile || fail "Dockerfile does not build the middleway binary"
grep -q 'cp target/release/middleway /usr/local/bin/middleway' Dockerfile || fail "Dockerfile copies another path"
grep -q '^USER 10001' Dockerfile || fail "runtime image must run as the non-root user 10001"
grep -q '^STOPSIGNAL SIGTERM' Dockerfile || fail "STOPSIGNAL SIGTERM missing"
! grep -q '^HEALTHCHECK' Dockerfile || fail "no HEALTHCHECK: Kubernetes probes do that"
! grep -Eq '^(ENV|ARG) .*(DATABASE_URL|REDIS_URL|API_KEYS)' Dockerfile || fail "secrets must not be baked into the image"
cargo build --release --locked --bin middleway -q
[ -x target/release/middleway ] || fail "target/release/middleway was not built"
./target/release/middleway --version >/dev/null
echo "check-deploy: every kustomization renders and validates, alerts pass their tests, Dockerfile consistent with the release build"
