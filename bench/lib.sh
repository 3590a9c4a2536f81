# What the lock benchmarks' scripts share; sourced after
# `eval "$(scripts/services.sh env)"` (it needs REDIS_URL).

# A random API key for one run's services.
bench_key() { echo "bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }

# Deletes the keys matching $1 from the shared Redis: the lock keys a run
# leaves live for a day, and millions of them slow every test that shares it.
forget_keys() { redis-cli -u "$REDIS_URL" --scan --pattern "$1" | xargs -r -n 1000 redis-cli -u "$REDIS_URL" UNLINK >/dev/null; }

# Waits up to 10 s for the service on 127.0.0.1:$1 to answer /readyz (a
# service that never does fails the first cell instead).
await_ready() {
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.1; done
  return 0
}

# Starts the JSON floor (bench/src/bin/json-floor.rs) on 127.0.0.1:$1 and
# waits up to 10 s until it accepts connections; its pid lands in $json_floor.
start_json_floor() {
  target/release/json-floor "127.0.0.1:$1" & json_floor=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
}
