#!/usr/bin/env bash
# Where a lock pair's service CPU goes: one replica under 64 callers (CALLERS=n) of
# acquire + release on 1,000 names (NAMES=n; REQUESTS=n pairs, 100,000 by default), sampled
# by perf for 5 s, the samples summed by where they land (kernel, HTTP, the Redis
# client, ...). STRATEGY=http-floor profiles pairs of GET /healthz instead (give it
# REQUESTS=500000: it must still run when perf starts).
# Run after `bench/run.sh locks` (it builds the binaries). bench/README.md,
# "Lock path against direct scripts", has a run of it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v perf >/dev/null || { echo "profile-locks: needs perf (apt-get install linux-perf)" >&2; exit 2; }
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
source bench/lib.sh
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/middleway_bench"
key=$(bench_key)
out=$(mktemp -d)
API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:18400 ADMIN_BIND_ADDR=127.0.0.1:19400 \
  REDIS_KEY_PREFIX="mwprofile-$RANDOM:" RUST_LOG=warn target/release/middleway serve >/dev/null 2>&1 &
service=$!
trap 'kill $service 2>/dev/null || true; sleep 0.5; forget_keys "mwprofile-*"' EXIT
await_ready 18400
redis=(redis-cli -u "$REDIS_URL")
"${redis[@]}" CONFIG RESETSTAT >/dev/null
target/release/mwbench locks --service 127.0.0.1:18400 --admin 127.0.0.1:19400 --key "$key" \
  --redis-url "$REDIS_URL" --strategies "${STRATEGY:-middleway}" --concurrency "${CALLERS:-64}" --requests "${REQUESTS:-100000}" --names "${NAMES:-1000}" \
  --runs 1 --out /dev/null 2>&1 | tail -1 &
load=$!
sleep 2
perf record -q -F 1999 -g -p "$service" -o "$out/perf.data" -- sleep 5 2>/dev/null
wait $load
perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9.]+%' > "$out/symbols.txt"
python3 - "$out/symbols.txt" <<'PY'
import collections, re, sys
# First match wins: the order puts the specific before the general.
rules = [
    ("kernel (syscalls, TCP, scheduling)", r"\[k\]"),
    ("memcpy / memset / memcmp", r"mem(move|set|cmp|cpy)"),
    ("allocator (jemalloc)", r"_rjem|malloc|free|rallocx"),
    ("Redis client (redis-rs, deadpool)", r"redis::|deadpool|combine::"),
    ("HTTP (actix, httparse, bytes)", r"actix|http::|h1::|httparse|bytes::"),
    ("JSON (serde)", r"serde"),
    ("logs and spans (tracing)", r"tracing|regex"),
    ("async runtime (tokio, mio)", r"tokio::|mio::|parking_lot"),
    ("middleway's own code", r"middleway::"),
    ("clock reads", r"vdso|clock_gettime"),
]
shares = collections.Counter()
for line in open(sys.argv[1]):
    percent, symbol = line.split("%", 1)
    name = next((n for n, r in rules if re.search(r, symbol)), "other (std, hashing, prometheus, ...)")
    shares[name] += float(percent)
for name, share in shares.most_common():
    print(f"{share:5.1f} %  {name}")
PY
# By thread: the HTTP workers ("actix-server wo") against the main runtime
# ("tokio-rt-worker"), where the background worker claims offers for waiters.
perf report -i "$out/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | sed 's/^ */thread: /'
per_call() { "${redis[@]}" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p'; }
echo "Redis time per script call under that load: $(per_call) µs (INFO commandstats, EVALSHA)"
# What every call pays before its own work: the call itself, and common.lua's
# top level (its functions defined again on each call).
port=$(echo "$REDIS_URL" | sed -E 's#.*:([0-9]+)(/.*)?$#\1#')
empty=$("${redis[@]}" SCRIPT LOAD "return 1")
prelude=$("${redis[@]}" SCRIPT LOAD "$(cat src/locks/store/scripts/common.lua; echo; echo 'return 1')")
for sha in "$empty" "$prelude"; do
  "${redis[@]}" CONFIG RESETSTAT >/dev/null
  redis-benchmark -h 127.0.0.1 -p "$port" -n 100000 -c 32 -P 8 -q EVALSHA "$sha" 5 a b c d e n >/dev/null
  [ "$sha" = "$empty" ] && what="an empty script (return 1)" || what="common.lua's top level + return 1"
  echo "Redis time per call of $what: $(per_call) µs"
done
echo "profile-locks: perf data in $out/perf.data"
