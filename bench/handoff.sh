#!/usr/bin/env bash
# Hand-off latency of one or more builds, alternating: 100 requests wait on
# one lock name and each release hands the lock to the next (mwbench
# handoff, 3,000 hand-offs per round), ROUNDS rounds (6 by default), each
# build in turn, so a drift of the machine touches all alike. Its p99 moves
# by 10 % between rounds of one build; `bench/run.sh locks` measures three
# rounds beside everything else, this gives more. Run after `bench/run.sh
# locks` (it builds mwbench).
#   bench/handoff.sh BINARY [BINARY...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: bench/handoff.sh BINARY [BINARY...]" >&2; exit 2; }
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
source bench/lib.sh
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/middleway_bench"
key=$(bench_key)
pids=()
for i in $(seq 0 $(($# - 1))); do
  binary=${*:$((i + 1)):1}
  API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:$((18500 + i)) ADMIN_BIND_ADDR=127.0.0.1:$((19500 + i)) \
    REDIS_KEY_PREFIX="mwhandoff-$i-$RANDOM:" RUST_LOG=warn "$binary" serve >/dev/null 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true; sleep 0.5; forget_keys "mwhandoff-*"' EXIT
for i in "${!pids[@]}"; do await_ready $((18500 + i)); done
out=$(mktemp)
for round in $(seq 1 "${ROUNDS:-6}"); do
  for i in "${!pids[@]}"; do
    echo "build=$i round=$round $(target/release/mwbench handoff --service 127.0.0.1:$((18500 + i)) \
      --admin 127.0.0.1:$((19500 + i)) --key "$key" --waiters 100 --handoffs 3000)" | tee -a "$out"
  done
done
python3 - "$out" "$@" <<'PY'
import re, sys
out, binaries = sys.argv[1], sys.argv[2:]
rows = [dict(re.findall(r"(\w+)=([\w.]+)", line)) for line in open(out)]
median = lambda values: sorted(values)[len(values) // 2]
for i, binary in enumerate(binaries):
    mine = [r for r in rows if r["build"] == str(i)]
    print(f"{binary}: median of {len(mine)} rounds p50 {median([float(r['p50_ms']) for r in mine]):.2f} ms, "
          f"p99 {median([float(r['p99_ms']) for r in mine]):.2f} ms, p99.9 {median([float(r['p999_ms']) for r in mine]):.2f} ms")
if len(binaries) > 1:
    first = [float(r["p99_ms"]) for r in rows if r["build"] == "0"]
    for i in range(1, len(binaries)):
        other = [float(r["p99_ms"]) for r in rows if r["build"] == str(i)]
        ratios = [a / b for a, b in zip(first, other)]
        print(f"p99 {binaries[0]} / {binaries[i]} by round: median {median(ratios):.3f}, the first lower in {sum(r < 1 for r in ratios)} of {len(ratios)}")
PY
