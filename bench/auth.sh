#!/usr/bin/env bash
# bench/run.sh auth: the service's CPU per authenticated GET /transcriptions/{id}
# with each kind of credential, in one run against one release build: an API
# key, a JWT (ES256, verified once then cached) and an AWS IAM token (checked
# with moto's STS once, then cached). Alternating rounds (ROUNDS=3), medians.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "bench: $*" >&2; }
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
command -v moto_server >/dev/null && python3 -c 'import joserfc, boto3' 2>/dev/null ||
  python3 -m pip install -q 'moto[server]>=5' 'joserfc>=1'
log "building (release)"
cargo build --release -q --bin middleway
cargo build --release -q --manifest-path bench/Cargo.toml --target-dir target
mw=target/release/middleway mwbench=target/release/mwbench
rows=10000
mysql_cli=(mariadb -N -h127.0.0.1 -P13306 -umiddleway -pmiddleway)
"${mysql_cli[@]}" -e "CREATE DATABASE IF NOT EXISTS middleway_bench_auth"
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/middleway_bench_auth"
$mw migrate >/dev/null
have=$("${mysql_cli[@]}" middleway_bench_auth -e 'SELECT COUNT(*) FROM transcriptions')
[ "$have" -ge "$rows" ] || $mw seed --rows "$rows" >/dev/null

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
issuer_port=$(port) sts_port=$(port)
issuer="http://127.0.0.1:$issuer_port" sts="http://127.0.0.1:$sts_port/"
audience=middleway-bench
jwt=$(python3 bench/auth_issuer.py "$work/issuer" "$issuer" "$audience" bench-fn)
(cd "$work/issuer" && exec python3 -m http.server -b 127.0.0.1 "$issuer_port" >/dev/null 2>&1) & pids+=($!)
moto_server -H 127.0.0.1 -p "$sts_port" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -sf "${sts}moto-api/" >/dev/null && curl -sf "$issuer/keys" >/dev/null && break; sleep 0.1; done
iam=$(python3 tests/api/helpers/iam_tokens.py "$sts" "$audience" "$sts" | python3 -c 'import json,sys; print(json.load(sys.stdin)["reports"])')
key="bench-key-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat > "$work/auth.toml" <<TOML
[[principals]]
name = "keyed"
api_keys = ["$key"]
scopes = ["transcriptions:read"]

[[principals]]
name = "oidc"
oidc = { issuer = "$issuer", subject = "bench-fn" }
scopes = ["transcriptions:read"]

[[principals]]
name = "iam"
aws = { arn = "arn:aws:iam::123456789012:role/reports-fn" }
scopes = ["transcriptions:read"]

[oidc."$issuer"]
audience = "$audience"
TOML
AUTH_FILE="$work/auth.toml" AUTH_AWS_AUDIENCE="$audience" AUTH_AWS_STS_ENDPOINTS="$sts" \
  BIND_ADDR=127.0.0.1:18400 ADMIN_BIND_ADDR=127.0.0.1:19400 REDIS_KEY_PREFIX="mwauth:" RUST_LOG=warn \
  $mw serve >/dev/null 2>&1 & service=$!; pids+=($service)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18400/readyz >/dev/null && break; sleep 0.1; done
for credential in "$key" "$jwt" "$iam"; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $credential" http://127.0.0.1:18400/transcriptions/1)
  [ "$status" = 200 ] || { log "a credential was refused ($status)"; exit 1; }
done

requests=${REQUESTS:-50000}
for round in $(seq 1 "${ROUNDS:-3}"); do
  order=(key jwt iam); [ $((round % 2)) = 0 ] && order=(iam jwt key)
  for kind in "${order[@]}"; do
    case $kind in key) bearer=$key ;; jwt) bearer=$jwt ;; iam) bearer=$iam ;; esac
    log "round $round: $kind"
    $mwbench read-cpu --service 127.0.0.1:18400 --admin 127.0.0.1:19400 --key "$bearer" --pid "$service" \
      --rows "$rows" --concurrency 64 --requests "$requests" >> "$work/$kind.txt"
  done
done
verifications=$(curl -s http://127.0.0.1:19400/metrics | grep '^middleway_auth_verifications_total' | grep -v ' 0$' || true)
echo "Authenticated GET /transcriptions/{id}, $(date -u +%F), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')); ${ROUNDS:-3} rounds of $requests GETs at 64 callers per credential, medians"
python3 - "$work" <<'PY'
import re, statistics, sys
work = sys.argv[1]
rows = {}
for kind in ("key", "jwt", "iam"):
    lines = open(f"{work}/{kind}.txt").read().splitlines()
    per_get = [float(re.search(r"per_get=([\d.]+)us", l).group(1)) for l in lines]
    rate = [float(re.search(r"throughput=([\d.]+)/s", l).group(1)) for l in lines]
    failures = [re.search(r"failures=(\S+)", l).group(1) for l in lines]
    rows[kind] = (statistics.median(per_get), statistics.median(rate), per_get, failures)
base = rows["key"][0]
print("| credential | service CPU per GET (median) | added vs API key | GET/s (median) | per round |")
print("|---|---|---|---|---|")
names = {"key": "API key", "jwt": "JWT (ES256, cached)", "iam": "AWS IAM token (cached)"}
for kind, (cpu, rate, all_cpu, failures) in rows.items():
    added = "" if kind == "key" else f"{cpu - base:+.1f} µs"
    print(f"| {names[kind]} | {cpu:.1f} µs | {added} | {rate:,.0f} | {', '.join(f'{c:.1f}' for c in all_cpu)} |")
PY
echo "Verifications (signature checks and STS calls; the rest were cache hits):"
echo "$verifications" | sed 's/^/  /'
