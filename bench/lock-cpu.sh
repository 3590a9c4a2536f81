#!/usr/bin/env bash
# Where one lock cell's CPU goes, per pair: the service, Redis and the load
# generator, how many script runs Redis served (calls per run shows how
# much the service batched) and how often the service's threads were switched
# out. One replica, 30,000 acquire + release pairs on
# 1,000 names. Run after `bench/run.sh locks` (it builds the binaries).
#   bench/lock-cpu.sh [BINARY] [CALLERS] [STRATEGY]
#   BINARY defaults to target/release/middleway, CALLERS to 64, STRATEGY to
#   middleway (direct-scripts: the same scripts straight to Redis, no service;
#   http-floor: pairs of GET /healthz, no Redis)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binary=${1:-target/release/middleway} callers=${2:-64} strategy=${3:-middleway}
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
source bench/lib.sh
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/middleway_bench"
key=$(bench_key)
API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:18400 ADMIN_BIND_ADDR=127.0.0.1:19400 \
  REDIS_KEY_PREFIX="mwcpu-$RANDOM:" RUST_LOG=warn "$binary" serve >/dev/null 2>&1 &
service=$!
trap 'kill $service 2>/dev/null || true; sleep 0.5; forget_keys "mwcpu-*"; forget_keys "mwbench:*"' EXIT
await_ready 18400
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{printf "%.6f", ($14 + $15) / t}' "/proc/$1/stat"; }
redis=(redis-cli -u "$REDIS_URL")
redis_pid=$("${redis[@]}" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
"${redis[@]}" CONFIG RESETSTAT >/dev/null
out=$(mktemp)
# Context switches of the service's threads, summed by thread name (HTTP
# workers "actix-server wo", the main runtime "tokio-rt-worker"): voluntary
# ones are a thread going to sleep, involuntary ones a thread preempted by
# another process that wants the core (Redis and the load generator share it).
switches() {
  for t in /proc/"$service"/task/*; do
    printf '%s\t%s\n' "$(cat "$t/comm" 2>/dev/null)" "$(awk '/^(nonvoluntary|voluntary)_ctxt_switches/ {printf "%s ", $2}' "$t/status" 2>/dev/null)"
  done
}
switches > "$out.switches0"
s0=$(cpu_of "$service"); r0=$(cpu_of "$redis_pid")
load=$( { /usr/bin/time -f "%U %S" target/release/mwbench locks --service 127.0.0.1:18400 \
  --admin 127.0.0.1:19400 --key "$key" --redis-url "$REDIS_URL" --strategies "$strategy" \
  --concurrency "$callers" --requests 30000 --names 1000 --runs 1 --out "$out" >/dev/null; } 2>&1 | tail -1)
s1=$(cpu_of "$service"); r1=$(cpu_of "$redis_pid")
switches > "$out.switches1"
runs=$("${redis[@]}" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p')
python3 - "$out" "$s0" "$s1" "$r0" "$r1" "$load" "${runs:-0}" "$strategy" <<'PY'
import collections, json, sys
out, s0, s1, r0, r1, load, runs, strategy = sys.argv[1:]
cell = json.loads(open(out).read().splitlines()[-1])
pairs = 30000
per_pair = lambda seconds: seconds * 1e6 / pairs
service = f"{per_pair(float(s1) - float(s0)):.0f} µs" if strategy != "direct-scripts" else "-"
print(f"{strategy} callers={cell['concurrency']} pairs/s={cell['throughput']:.0f} p50={cell['p50_ms']:.2f}ms "
      f"CPU per pair: service {service}, Redis {per_pair(float(r1) - float(r0)):.0f} µs, "
      f"load generator {per_pair(sum(map(float, load.split()))):.0f} µs; "
      f"script runs {runs} ({2 * pairs / max(int(runs), 1):.1f} calls per run)")
# Per thread name: (voluntary, involuntary) switches during the cell, per pair.
def switches(path):
    sums = collections.defaultdict(lambda: [0, 0])
    for line in open(path):
        name, counts = line.rstrip("\n").split("\t")
        voluntary, involuntary = map(int, counts.split())
        sums[name][0] += voluntary
        sums[name][1] += involuntary
    return sums
before, after = switches(out + ".switches0"), switches(out + ".switches1")
for name in sorted(after):
    voluntary, involuntary = (after[name][i] - before.get(name, [0, 0])[i] for i in (0, 1))
    if voluntary + involuntary >= pairs // 100:
        print(f"  context switches per pair, {name.strip()} threads: {voluntary / pairs:.2f} voluntary, {involuntary / pairs:.2f} involuntary")
PY
