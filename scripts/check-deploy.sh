#!/usr/bin/env bash
# Checks what can be checked of the deployment artefacts without a Docker engine
# or a cluster. Used by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fail() { echo "check-deploy: $*" >&2; exit 1; }

# --- Kubernetes manifests: schema-valid (strict) at the validator's current Kubernetes version.
command -v kubernetes-validate >/dev/null 2>&1 || pip install -q kubernetes-validate
manifests=$(ls k8s/*.yaml | grep -v kustomization.yaml)
# shellcheck disable=SC2086
kubernetes-validate --strict --quiet $manifests
# The kustomization names every manifest, and only existing ones.
for f in $manifests; do
  grep -q "^  - $(basename "$f")$" k8s/kustomization.yaml || fail "$f is not listed in k8s/kustomization.yaml"
done
for f in $(sed -n '/^resources:/,/^[a-z]/p' k8s/kustomization.yaml | sed -n 's/^  - //p'); do
  [ -f "k8s/$f" ] || fail "k8s/kustomization.yaml lists missing $f"
done
# The grace period must outlast the drain plus the preStop pause.
grace=$(sed -n 's/^ *terminationGracePeriodSeconds: *//p' k8s/deployment.yaml)
drain=$(sed -n 's/^ *SHUTDOWN_TIMEOUT_S: *"\([0-9]*\)"/\1/p' k8s/configmap.yaml)
pause=$(sed -n '/preStop:/,/seconds:/s/^ *seconds: *//p' k8s/deployment.yaml)
[ "$grace" -gt $((drain + pause)) ] || fail "terminationGracePeriodSeconds $grace <= SHUTDOWN_TIMEOUT_S $drain + preStop $pause"

# --- The example overlays (k8s/overlays/*): each patch names an object of the
# base; the patched objects (strategic merge: maps merged, containers and
# volumes merged by name) are schema-valid; every variable they set is one the
# service reads; a CA file named in a URL lies in a mounted volume.
rendered=$(mktemp -d)
python3 - "$rendered" <<'PY' || fail "k8s/overlays are inconsistent"
import copy, glob, os, re, sys, yaml
out = sys.argv[1]
base = {}
for f in glob.glob("k8s/*.yaml"):
    if f.endswith("kustomization.yaml"):
        continue
    for doc in yaml.safe_load_all(open(f)):
        if doc:
            base[(doc["kind"], doc["metadata"]["name"])] = doc
source = "".join(open(f).read() for f in glob.glob("src/**/*.rs", recursive=True))

def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        for k, v in b.items():
            a[k] = merge(a[k], v) if k in a else v
        return a
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) and "name" in x for x in a + b):
        names = {x["name"]: x for x in a}
        for x in b:
            if x["name"] in names:
                merge(names[x["name"]], x)
            else:
                a.append(x)
        return a
    return b

pristine = base
for overlay in glob.glob("k8s/overlays/*/kustomization.yaml"):
    base = copy.deepcopy(pristine)
    here = os.path.dirname(overlay)
    k = yaml.safe_load(open(overlay))
    assert k["resources"] == ["../.."], overlay
    mounts = []
    for patch in k["patches"]:
        doc = yaml.safe_load(open(os.path.join(here, patch["path"])))
        key = (doc["kind"], doc["metadata"]["name"])
        assert key in base, f"{overlay}: {patch['path']} patches {key}, not in the base"
        merge(base[key], doc)
        for name, value in {**doc.get("data", {}), **doc.get("stringData", {})}.items():
            assert f'"{name}"' in source, f"{overlay}: {name} is not a variable the service reads"
    deployment = base[("Deployment", "middleway")]
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        mounts += [m["mountPath"] for m in c.get("volumeMounts", [])]
    secret = base[("Secret", "middleway")]["stringData"]
    for url in secret.values():
        for path in re.findall(r"ssl-ca=([^&]+)", url):
            assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is not in a mounted volume"
    name = os.path.basename(here)
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
        yaml.safe_dump_all(list(base.values()), f)
PY
# shellcheck disable=SC2046
kubernetes-validate --strict --quiet $(ls "$rendered"/*.yaml)
rm -rf "$rendered"

# --- Observability: the alerts are a well-formed PrometheusRule, the dashboard
# is JSON, the kustomization lists what exists. (That they query only metrics
# the service exports is tests/api/observability.rs, against a live scrape.)
python3 - <<'PY' || fail "k8s/observability is malformed"
import json, yaml
rule = yaml.safe_load(open("k8s/observability/prometheus-rule.yaml"))
assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
assert rules and all(r["alert"] and r["expr"] and r["labels"]["severity"] for r in rules)
dashboard = json.load(open("k8s/observability/dashboard.json"))
assert dashboard["panels"] and all(p["targets"] for p in dashboard["panels"])
kustomization = yaml.safe_load(open("k8s/observability/kustomization.yaml"))
import os
for f in kustomization["resources"] + [f for g in kustomization["configMapGenerator"] for f in g["files"]]:
    assert os.path.exists(os.path.join("k8s/observability", f)), f
PY

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
echo "check-deploy: manifests valid, Dockerfile consistent with the release build"
