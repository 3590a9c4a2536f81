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
