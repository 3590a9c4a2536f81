#!/usr/bin/env bash
# The benchmark, in one command (see bench/README.md):
#   bench/run.sh          full run: 1,000,000 rows, every strategy and concurrency,
#                         writes bench/results/<date>-<host>.md and its PNG charts
#   bench/run.sh smoke    seconds-long: one small cell per strategy (CI runs this)
#   bench/run.sh lockcheck [--short] [--seed N] [--minutes M]
#                         the lock history checker (bench/README.md, "Lock checker"):
#                         faults injected, every operation recorded and checked;
#                         --short (about 4 minutes) runs in CI, the long form lasts 24 minutes
#   bench/run.sh locks [REV]
#                         lock pairs/s (10, 64 and 250 callers over 1,000 names, NAMES=n
#                         for others), the service's, Redis' and the load generator's
#                         CPU per pair, hand-off
#                         latency (100 waiters on one name), beside the same scripts sent
#                         straight to Redis (direct-scripts) and the HTTP floor (pairs of
#                         GET /healthz) and the JSON floor (bench/src/bin/json-floor.rs: the
#                         same pairs answered by a bare actix-web JSON route); with a git
#                         revision, that revision is built too;
#                         all measured in alternating rounds (ROUNDS=5; medians reported)
#   bench/run.sh auth     the service's CPU per authenticated GET with an API key, a
#                         cached JWT and a cached AWS IAM token, same run (bench/auth.sh)
#   bench/run.sh replicas GET/s and where the MySQL CPU goes, with two read replicas
#                         (DATABASE_READ_URLS) against the primary alone, same run (bench/replicas.sh)
#   bench/run.sh lockcheck --self-test
#                         the checker must catch an engine broken on purpose (CI runs this)
set -euo pipefail
mode=${1:-full}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "bench: $*" >&2; }

if [ "$mode" = auth ]; then
  exec bench/auth.sh
fi

if [ "$mode" = replicas ]; then
  exec bench/replicas.sh
fi

if [ "$mode" = locks ]; then
  baseline_rev=${2:-}
  scripts/services.sh start
  eval "$(scripts/services.sh env)"
  source bench/lib.sh
  log "building (release)"
  mkdir -p .local
  # Both trees build in the same target dir (dependencies compile once). Cargo
  # names a path package's artifacts by its path relative to its workspace,
  # the same for both trees, and checks its sources' times by relative path
  # too: a tree built after the other can look fresh and keep the other's
  # binary. So the package is cleaned before each build, and two identical
  # binaries stop the run.
  cargo clean --release -q -p middleway
  cargo build --release -q --bin middleway
  cargo build --release -q --manifest-path bench/Cargo.toml --target-dir target
  cp target/release/middleway .local/middleway-current
  if [ -n "$baseline_rev" ]; then
    rm -rf .local/baseline && git worktree prune
    git worktree add --detach .local/baseline "$baseline_rev" >/dev/null
    cargo clean --release -q -p middleway
    cargo build --release -q --manifest-path .local/baseline/Cargo.toml --target-dir target --bin middleway
    cp target/release/middleway .local/middleway-baseline
    git worktree remove --force .local/baseline
    if cmp -s .local/middleway-current .local/middleway-baseline; then
      log "the baseline ($baseline_rev) built to the same binary as the current tree: nothing to compare"
      exit 1
    fi
    # target/release/middleway is the current tree's again (bench/profile-locks.sh runs it).
    cp .local/middleway-current target/release/middleway
  fi
  mysql_cli=(mariadb -N -h127.0.0.1 -P13306 -umiddleway -pmiddleway)
  "${mysql_cli[@]}" -e "CREATE DATABASE IF NOT EXISTS middleway_bench"
  export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/middleway_bench"
  .local/middleway-current migrate >/dev/null
  key=$(bench_key)
  labels=(current); [ -n "$baseline_rev" ] && labels+=(baseline)
  pids=()
  for i in "${!labels[@]}"; do
    API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:$((18300 + i)) ADMIN_BIND_ADDR=127.0.0.1:$((19300 + i)) \
      REDIS_KEY_PREFIX="mwlocks-${labels[$i]}-$RANDOM:" RUST_LOG=warn .local/middleway-"${labels[$i]}" serve >/dev/null 2>&1 &
    pids+=($!)
  done
  trap 'kill "${pids[@]}" 2>/dev/null || true; sleep 0.5; forget_keys "mwlocks-*"; forget_keys "mwbench:*"' EXIT
  for i in "${!labels[@]}"; do await_ready $((18300 + i)); done
  # The JSON floor: the same acquire + release bodies read and answered by a
  # bare actix-web route (no middleware, no auth, no Redis), as many workers.
  start_json_floor 18390
  pids+=("$json_floor")
  work=$(mktemp -d)
  ticks=$(getconf CLK_TCK)
  cpu_of() { awk -v t="$ticks" '{printf "%.6f", ($14 + $15) / t}' "/proc/$1/stat"; }
  redis_cpu() { redis-cli -u "$REDIS_URL" INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
  # The CPU this shell's finished children have used, in seconds: bash's
  # `times` (its second line), which must run in this shell (in a `$(...)`
  # subshell it would count the subshell's children), then read from a file.
  children_cpu() {
    tail -n 1 "$work/times.txt" | tr 'ms' '  ' | awk '{printf "%.6f", $1 * 60 + $2 + $3 * 60 + $4}'
  }
  # cell LABEL PID CALLERS ARGS...: one mwbench locks cell; the CPU Redis,
  # the load generator and (with a PID) that process spent on it, per pair,
  # goes to LABEL-cost.txt.
  cell() {
    local label=$1 pid=$2 callers=$3; shift 3
    local service0 redis0 client0; service0=$( [ -n "$pid" ] && cpu_of "$pid" || echo 0); redis0=$(redis_cpu)
    times > "$work/times.txt"; client0=$(children_cpu)
    target/release/mwbench locks "$@" --redis-url "$REDIS_URL" --concurrency "$callers" --requests 30000 \
      --names "$names" --runs 1 --out "$work/$label.jsonl" 2>/dev/null >/dev/null
    local client1; times > "$work/times.txt"; client1=$(children_cpu)
    local service1 redis1; service1=$( [ -n "$pid" ] && cpu_of "$pid" || echo 0); redis1=$(redis_cpu)
    per_pair() { echo "($2 - $1) * 1000000 / 30000" | bc -l; }
    echo "callers=$callers service_us=$(per_pair "$service0" "$service1") redis_us=$(per_pair "$redis0" "$redis1") client_us=$(per_pair "$client0" "$client1")" >> "$work/$label-cost.txt"
  }
  # Alternating rounds, so a drift of the machine touches all alike; each
  # round in the other order, so no binary always goes first. The same
  # scripts sent straight to Redis (direct-scripts: 32 multiplexed
  # connections, no HTTP) are the baseline issue 27 measures against. The
  # HTTP floor (two keep-alive GET /healthz of the current service per pair:
  # no auth, no Redis, a constant body) is what no lock engine behind this
  # HTTP stack can beat on this machine. The JSON floor (two POSTs with JSON
  # bodies read and answered by a bare actix-web route) is what no lock
  # service on actix-web can beat here, whatever its middleware and engine.
  entries=("${!labels[@]}" direct floor json)
  rounds=${ROUNDS:-5}
  names=${NAMES:-1000}
  for round in $(seq 1 "$rounds"); do
    order=("${entries[@]}"); [ $((round % 2)) = 0 ] && order=($(printf '%s\n' "${order[@]}" | tac))
    for i in "${order[@]}"; do
      # The reference cells: direct-scripts (no service, so no service CPU)
      # and the HTTP floor (the current service's CPU).
      if [ "$i" = direct ] || [ "$i" = floor ]; then
        if [ "$i" = direct ]; then strategy=direct-scripts pid=""; else strategy=http-floor pid=${pids[0]}; fi
        log "round $round: $strategy"
        for callers in 10 64 250; do
          cell "$strategy" "$pid" "$callers" --service 127.0.0.1:18300 --key "$key" --strategies "$strategy"
        done
        continue
      fi
      if [ "$i" = json ]; then
        log "round $round: json-floor"
        for callers in 10 64 250; do
          cell json-floor "$json_floor" "$callers" --service 127.0.0.1:18390 --key "$key" --strategies middleway
        done
        continue
      fi
      label=${labels[$i]}
      target=(--service 127.0.0.1:$((18300 + i)) --admin 127.0.0.1:$((19300 + i)) --key "$key")
      log "round $round: $label"
      for callers in 10 64 250; do
        cell "$label" "${pids[$i]}" "$callers" "${target[@]}" --strategies middleway
      done
      target/release/mwbench handoff "${target[@]}" --waiters 100 --handoffs 3000 >> "$work/$label-handoff.txt"
    done
  done
  echo "Lock path, $(date -u +%F), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)"
  [ -n "$baseline_rev" ] && echo "current: $(git rev-parse --short HEAD); baseline: $(git rev-parse --short "$baseline_rev")"
  python3 - "$work" "$names" "$(nproc)" "${labels[@]}" direct-scripts http-floor json-floor <<'PY'
import json, os, re, sys
work, names, cores, labels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
# Medians: the machine drifts over a run, and one lucky round should not decide.
median = lambda values: sorted(values)[len(values) // 2] if values else float("nan")
print(f"medians of the rounds; pairs = acquire + release on {names:,} names (http-floor: two GET /healthz;")
print(f"json-floor: the pair's two POSTs answered by a bare actix-web JSON route); CPU per pair at 64 callers")
print(f"(service, Redis, the load generator: mwbench), and the service's at 250")
print(f"{'':15} {'pairs/s @10':>11} {'p50 @10':>8} {'pairs/s @64':>11} {'pairs/s @250':>12} {'service CPU':>11} {'Redis CPU':>9} {'client CPU':>10} {'service @250':>12} {'hand-off p50/p99':>16}")
# A label's CPU per pair (key: service_us, redis_us or client_us) at that many callers.
def cost(label, key, callers):
    lines = [dict(re.findall(r"(\w+)=([\d.]+)", l)) for l in open(f"{work}/{label}-cost.txt")]
    return median([float(c[key]) for c in lines if c["callers"] == str(callers)])
for label in labels:
    cells = [json.loads(l) for l in open(f"{work}/{label}.jsonl")]
    rate = {c: median([x["throughput"] for x in cells if x["concurrency"] == c]) for c in (10, 64, 250)}
    p50 = median([x["p50_ms"] for x in cells if x["concurrency"] == 10])
    cpu = lambda key, callers=64: cost(label, key, callers)
    service = f"{cpu('service_us'):.0f} µs" if label != "direct-scripts" else "-"
    service_250 = f"{cpu('service_us', 250):.0f} µs" if label != "direct-scripts" else "-"
    handoff = "-"
    if os.path.exists(f"{work}/{label}-handoff.txt"):
        rounds = [dict(re.findall(r"(\w+)=([\d.]+)", l)) for l in open(f"{work}/{label}-handoff.txt")]
        handoff = "%.2f/%.2f ms" % tuple(median([float(r[k]) for r in rounds]) for k in ("p50_ms", "p99_ms"))
    print(f"{label:15} {rate[10]:>11,.0f} {p50:>6.2f}ms {rate[64]:>11,.0f} {rate[250]:>12,.0f} {service:>11} {cpu('redis_us'):>6.0f} µs {cpu('client_us'):>7.0f} µs {service_250:>12} {handoff:>16}")
# Paired by round (both measured within a minute of each other), the drift
# of the machine cancels: the ratio of each round, and how often each won.
def cells_of(label, concurrency):
    return [json.loads(l) for l in open(f"{work}/{label}.jsonl") if json.loads(l)["concurrency"] == concurrency]
# Issue 27's goal: pairs/s >= 1.0x direct-scripts at 64 and 250 callers, p50 at 10 <= 1.5x.
for what, key, concurrency in [("pairs/s @64", "throughput", 64), ("pairs/s @250", "throughput", 250), ("p50 @10", "p50_ms", 10)]:
    ratios = [c[key] / d[key] for c, d in zip(cells_of("current", concurrency), cells_of("direct-scripts", concurrency))]
    print(f"current / direct-scripts, {what}: median of {len(ratios)} rounds {median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
# The service's budget: on these cores the service, Redis and the load
# generator share, the goal leaves the service at most cores / (direct's
# pairs/s) minus what Redis and the load generator spent on this build's
# pair. (At 10 callers the goal is a p50; in a closed loop the p50 follows
# 1 / pairs/s, so it allows 1.5x direct's time per pair.) Against the HTTP
# floor's service CPU, this says whether any lock engine behind this HTTP
# stack could meet the goal here.
for callers, slack in [(10, 1.5), (64, 1.0), (250, 1.0)]:
    direct = median([c["throughput"] for c in cells_of("direct-scripts", callers)])
    others = cost("current", "redis_us", callers) + cost("current", "client_us", callers)
    budget = cores * 1e6 * slack / direct - others
    print(f"service CPU per pair the goal allows @{callers}: {budget:.0f} µs (Redis + load generator {others:.0f} µs of "
          f"{cores * 1e6 * slack / direct:.0f}); current spends {cost('current', 'service_us', callers):.0f} µs, the HTTP floor {cost('http-floor', 'service_us', callers):.0f} µs, "
          f"the JSON floor {cost('json-floor', 'service_us', callers):.0f} µs")
if "baseline" in labels:
    def per_round(label, concurrency):
        return [json.loads(l)["throughput"] for l in open(f"{work}/{label}.jsonl") if json.loads(l)["concurrency"] == concurrency]
    def handoff_p99(label):
        return [float(dict(re.findall(r"(\w+)=([\d.]+)", l))["p99_ms"]) for l in open(f"{work}/{label}-handoff.txt")]
    for what, current, baseline, better in [
        ("pairs/s @64", per_round("current", 64), per_round("baseline", 64), lambda r: r > 1),
        ("pairs/s @250", per_round("current", 250), per_round("baseline", 250), lambda r: r > 1),
        ("hand-off p99", handoff_p99("current"), handoff_p99("baseline"), lambda r: r < 1),
    ]:
        ratios = [c / b for c, b in zip(current, baseline)]
        print(f"current / baseline, {what}: median of {len(ratios)} rounds {median(ratios):.3f}; current better in {sum(map(better, ratios))}")
PY
  exit 0
fi

if [ "$mode" = lockcheck ]; then
  shift
  # The checker starts its own MariaDB and Redis servers; this only installs them when missing.
  scripts/services.sh start >/dev/null
  log "building the service and the checker (release)"
  cargo build --release -q --bin middleway
  cargo build --release -q --manifest-path bench/lockcheck/Cargo.toml --target-dir target
  if [ "${1:-}" = --self-test ]; then
    shift
    # The sabotage switch exists in debug builds only.
    cargo build -q --bin middleway
    for kind in permits fences; do
      log "self-test: an engine broken on purpose ($kind) must be caught"
      target/release/lockcheck --sabotage "$kind" --service target/debug/middleway "$@"
    done
    exit 0
  fi
  exec target/release/lockcheck --service target/release/middleway "$@"
fi

scripts/services.sh start
eval "$(scripts/services.sh env)"
source bench/lib.sh
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building (release)"
cargo build --release -q --bin middleway
# Same target dir as the service: shared dependencies compile once.
cargo build --release -q --manifest-path bench/Cargo.toml --target-dir target
mw=target/release/middleway
mwbench=target/release/mwbench

if [ "$mode" = smoke ]; then rows=20000; else rows=1000000; fi
db=middleway_bench
mysql_cli=(mariadb -N -h127.0.0.1 -P13306 -umiddleway -pmiddleway)
"${mysql_cli[@]}" -e "CREATE DATABASE IF NOT EXISTS $db"
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/$db"
$mw migrate >/dev/null
have=$("${mysql_cli[@]}" $db -e "SELECT COUNT(*) FROM transcriptions")
if [ "$have" -lt "$rows" ]; then
  log "seeding $rows rows"
  "${mysql_cli[@]}" $db -e "TRUNCATE transcriptions"
  start=$(date +%s.%N)
  $mw seed --rows "$rows" >/dev/null 2>&1
  log "seeded $rows rows in $(echo "$(date +%s.%N) - $start" | bc) s"
fi

# Read the whole table once so every strategy meets a warm buffer pool
# (a MariaDB restarted since seeding would otherwise favour later cells).
"${mysql_cli[@]}" $db -e "SELECT COUNT(*), SUM(LENGTH(content)) FROM transcriptions" >/dev/null

service=127.0.0.1:18080
admin=127.0.0.1:19090
key="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mysql_root="mysql://root@127.0.0.1:13306"
# fleet LABEL REPLICAS CALLERS REQUESTS [DB_FLEET_MAX]: that many replicas
# (DB_POOL_MAX=32, the budget on or off) under callers spread over them.
fleet() {
  local label=$1 replicas=$2 callers=$3 requests=$4 budget=${5:-} pids=() addresses=()
  for i in $(seq 0 $((replicas - 1))); do
    API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:$((18200 + i)) ADMIN_BIND_ADDR=127.0.0.1:$((19200 + i)) \
      REDIS_KEY_PREFIX="mwfleet-$label:" DB_POOL_MAX=32 env ${budget:+DB_FLEET_MAX=$budget} \
      RUST_LOG=warn $mw serve >/dev/null 2>&1 &
    pids+=($!); addresses+=("127.0.0.1:$((18200 + i))")
  done
  for address in "${addresses[@]}"; do
    for _ in $(seq 1 100); do curl -sf "http://$address/readyz" >/dev/null && break; sleep 0.1; done
  done
  $mwbench fleet --services "$(IFS=,; echo "${addresses[*]}")" --key "$key" --mysql-root-url "$mysql_root" \
    --rows "$rows" --concurrency "$callers" --requests "$requests" --label "$label"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}
# tracing_cost REQUESTS: CPU per GET of a fresh replica with traces off, then
# exported at 10 % (OTEL_TRACES_SAMPLER=traceidratio) to a do-nothing OTLP
# collector, and MySQL statement prepares per 1,000 GETs (reuse of prepared
# statements: sampled reads go as commented text queries).
tracing_cost() {
  local requests=$1
  python3 bench/otlp_sink.py 14318 & local sink=$!
  for traces in off on; do
    local extra=()
    [ "$traces" = on ] && extra=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:14318 OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1)
    env "${extra[@]}" API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:18090 ADMIN_BIND_ADDR=127.0.0.1:19190 \
      REDIS_KEY_PREFIX="mwtrace:" RUST_LOG=info LOG_FORMAT=json $mw serve >/dev/null 2>&1 &
    local traced=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18090/readyz >/dev/null && break; sleep 0.1; done
    local prepares_before; prepares_before=$(mariadb -N -h127.0.0.1 -P13306 -uroot -e "SHOW GLOBAL STATUS LIKE 'Com_stmt_prepare'" | awk '{print $2}')
    echo "traces $traces:"
    $mwbench read-cpu --service 127.0.0.1:18090 --admin 127.0.0.1:19190 --key "$key" --pid "$traced" \
      --rows "$rows" --concurrency 64 --requests "$requests"
    local prepares_after; prepares_after=$(mariadb -N -h127.0.0.1 -P13306 -uroot -e "SHOW GLOBAL STATUS LIKE 'Com_stmt_prepare'" | awk '{print $2}')
    echo "  MySQL statement prepares during the run (warm-up included): $((prepares_after - prepares_before))"
    kill $traced; wait $traced 2>/dev/null || true
  done
  kill $sink; wait $sink 2>/dev/null || true
}
work=$(mktemp -d)
if [ "$mode" != smoke ]; then
  # Before the main replicas start, so MySQL's connection count is the fleet's alone.
  log "issue 13: six replicas, 1,000 callers, with and without DB_FLEET_MAX=40"
  { fleet no-budget 6 1000 50000; fleet budget-40 6 1000 50000 40; } > "$work/fleet.txt"
fi
serve() { # address admin-address: one replica, JSON request logs at info to /dev/null
  API_KEYS="bench:$key" BIND_ADDR=$1 ADMIN_BIND_ADDR=$2 REDIS_KEY_PREFIX="mwbench:" \
    RUST_LOG=${BENCH_RUST_LOG:-info} LOG_FORMAT=json $mw serve >/dev/null 2>&1 &
}
serve $service $admin; pid=$!
# A second replica on the same MySQL and Redis, for the fairness and hand-off cells.
second=127.0.0.1:18081
serve $second 127.0.0.1:19091; second_pid=$!
trap 'kill -CONT $second_pid 2>/dev/null; kill $pid $second_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://$service/readyz" >/dev/null && curl -sf "http://$second/readyz" >/dev/null && break; sleep 0.1; done

target=(--service "$service" --admin "$admin" --key "$key")

stamp=$(date -u +%Y-%m-%d)
host=$(hostname -s)
if [ "$mode" = smoke ]; then
  out=$(mktemp -d)
  $mwbench mysql "${target[@]}" --mysql-url "$DATABASE_URL" --mysql-root-url "$mysql_root" --rows "$rows" \
    --concurrency 10 --requests 300 --runs 1 --out "$out/cells.jsonl"
  $mwbench locks "${target[@]}" --redis-url "$REDIS_URL" --concurrency 10 --requests 200 --runs 1 --out "$out/cells.jsonl"
  # The JSON floor of `bench/run.sh locks` answers the same pairs.
  start_json_floor 18390
  $mwbench locks --service 127.0.0.1:18390 --key "$key" --redis-url "$REDIS_URL" --strategies middleway --concurrency 10 --requests 200 \
    --runs 1 --out "$out/json-floor.jsonl"
  kill $json_floor; wait $json_floor 2>/dev/null || true
  [ "$(wc -l < "$out/json-floor.jsonl")" -eq 1 ] || { log "the JSON floor cell did not complete"; exit 1; }
  $mwbench handoff "${target[@]}" --waiters 10 --handoffs 50
  $mwbench waiters "${target[@]}" --redis-url "$REDIS_URL" --pid "$pid" --waiters 200 --names 10
  $mwbench idle "${target[@]}" --redis-url "$REDIS_URL" --waiters 50 --seconds 2
  $mwbench fairness "${target[@]}" --second-service "$second" --clients-first 4 --clients-second 1 --seconds 2
  $mwbench churn "${target[@]}" --redis-url "$REDIS_URL" --clients 10 --names 5 --seconds 2
  $mwbench handoff-cost "${target[@]}" --second-service "$second" --second-pid "$second_pid" --redis-url "$REDIS_URL"
  $mwbench mysql "${target[@]}" --mysql-url "$DATABASE_URL" --mysql-root-url "$mysql_root" --rows "$rows" \
    --strategies direct-persistent,middleway-batch-10,middleway-batch-100 --concurrency 4 --requests 100 --runs 1 --out "$out/cells.jsonl"
  $mwbench read-cpu "${target[@]}" --pid "$pid" --rows "$rows" --concurrency 8 --requests 2000
  $mwbench open-loop "${target[@]}" --rows "$rows" --rates 500 --seconds 1 --connections 16
  fleet budget-4 2 20 500 4
  tracing_cost 2000
  $mwbench report --input "$out/cells.jsonl" --stem "$out/smoke"
  cells=$(wc -l < "$out/cells.jsonl")
  [ "$cells" -eq 11 ] || { log "expected 11 cells, got $cells"; exit 1; }
  log "smoke ok: $cells cells, report and charts in $out"
  exit 0
fi

mkdir -p bench/results
stem="bench/results/$stamp-$host"
{
  echo "# middleway benchmark, $stamp on $host"
  echo
  echo "Reproduce: \`bench/run.sh\` from a clean clone (it starts MariaDB and Redis with scripts/services.sh, seeds $rows rows, builds in release mode and runs every cell)."
  echo
  echo "- commit: $(git rev-parse --short HEAD)"
  echo "- machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)"
  echo "- MariaDB $(mariadbd --version | awk '{print $3}') with max_connections=170; Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)"
  echo "- middleway: DB_POOL_MAX=32, RUST_LOG=${BENCH_RUST_LOG:-info} (JSON request logs to /dev/null); load generator, MariaDB, Redis and the service share the machine"
  echo "- every cell: warm-up, then 2 runs of the same work, best kept; latency of successful operations in an HDR histogram"
  echo
} > "$work/preamble.md"

log "issues 2 and 12: GET /transcriptions at 64 and 256 keep-alive connections vs the direct clients"
$mwbench mysql "${target[@]}" --mysql-url "$DATABASE_URL" --mysql-root-url "$mysql_root" --rows "$rows" \
  --strategies middleway-keep-alive,direct-persistent,ceiling --concurrency 64,256 --requests 100000 --runs 2 --out "$work/service.jsonl"
log "issue 12: the best direct client (one warm connection per caller) at 4..32 callers, batch reads"
$mwbench mysql "${target[@]}" --mysql-url "$DATABASE_URL" --mysql-root-url "$mysql_root" --rows "$rows" \
  --strategies direct-persistent --concurrency 4,8,16,32 --requests 100000 --runs 2 --out "$work/direct.jsonl"
$mwbench mysql "${target[@]}" --mysql-url "$DATABASE_URL" --mysql-root-url "$mysql_root" --rows "$rows" \
  --strategies middleway-batch-10,middleway-batch-100 --concurrency 16 --requests 20000 --runs 2 --out "$work/batch.jsonl"
log "issue 5: every strategy at 10..1000 callers"
$mwbench mysql "${target[@]}" --mysql-url "$DATABASE_URL" --mysql-root-url "$mysql_root" --rows "$rows" --out "$work/cells.jsonl"
$mwbench locks "${target[@]}" --redis-url "$REDIS_URL" --out "$work/cells.jsonl"
log "issue 3: lock pairs over 1,000 names at 64, hand-off, 10,000 waiters"
$mwbench locks "${target[@]}" --redis-url "$REDIS_URL" --strategies middleway --concurrency 64 --requests 100000 --out "$work/pairs.jsonl"
{
  echo "## Service at fixed concurrency (issue 2 and 3 targets)"
  echo
  echo '```'
  cat "$work/service.jsonl" "$work/pairs.jsonl"
  $mwbench handoff "${target[@]}" --waiters 100 --handoffs 3000
  $mwbench waiters "${target[@]}" --redis-url "$REDIS_URL" --pid "$pid" --waiters 10000 --names 100
  echo '```'
  echo
  echo "## Read path (issue 12)"
  echo
  echo '```'
  python3 - "$work/service.jsonl" "$work/direct.jsonl" "$work/batch.jsonl" <<'PY'
import json, sys
cells = [json.loads(line) for path in sys.argv[1:] for line in open(path)]
ours = max(c["throughput"] for c in cells if c["strategy"] == "middleway-keep-alive" and c["concurrency"] == 64)
best = max((c for c in cells if c["strategy"] == "direct-persistent"), key=lambda c: c["throughput"])
print(f"middleway at 64 keep-alive: {ours:,.0f}/s; best direct-persistent: {best['throughput']:,.0f}/s "
      f"at {best['concurrency']} callers; ratio {ours / best['throughput']:.2f}")
for c in cells:
    if c["strategy"].startswith("middleway-batch-"):
        size = int(c["strategy"].rsplit("-", 1)[1])
        print(f"batch of {size}: {c['throughput']:,.0f} requests/s = {c['throughput'] * size:,.0f} rows/s, p99 {c['p99_ms']:.2f} ms")
PY
  $mwbench read-cpu "${target[@]}" --pid "$pid" --rows "$rows" --concurrency 64 --requests 100000
  $mwbench open-loop "${target[@]}" --rows "$rows" --rates 5000,10000,15000,20000,25000,30000 --seconds 10
  echo '```'
  echo
  echo "## Traces: CPU per GET off and sampled at 10 % (issue 15)"
  echo
  echo '```'
  tracing_cost 100000
  echo '```'
  echo
  echo "## Six replicas, 1,000 callers: with and without a fleet budget (issue 13)"
  echo
  echo '```'
  cat "$work/fleet.txt"
  echo '```'
  echo
  echo "## Lock engine v2: what waiting costs (issue 10)"
  echo
  echo '```'
  $mwbench idle "${target[@]}" --redis-url "$REDIS_URL" --waiters 2000 --seconds 10
  $mwbench fairness "${target[@]}" --second-service "$second" --clients-first 40 --clients-second 4 --seconds 20
  $mwbench churn "${target[@]}" --redis-url "$REDIS_URL" --clients 100 --names 50 --seconds 20
  $mwbench handoff-cost "${target[@]}" --second-service "$second" --second-pid "$second_pid" --redis-url "$REDIS_URL"
  echo '```'
} > "$work/appendix.md"
$mwbench report --input "$work/cells.jsonl" --stem "$stem" --preamble "$work/preamble.md" --appendix "$work/appendix.md"
log "wrote $stem.md"
