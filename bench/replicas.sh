#!/usr/bin/env bash
# bench/run.sh replicas: GET /transcriptions/{id} with two read replicas
# (DATABASE_READ_URLS) against the primary alone, same run, same release build,
# same data: a MariaDB primary and two GTID replicas started here (ports
# 13316-13318, data under .local/bench-replicas), two services (one each way),
# alternating rounds (ROUNDS=3, medians). Reports GET/s, the service's CPU per
# GET and each MariaDB server's CPU per GET: where the database work went.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "bench: $*" >&2; }
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
log "building (release)"
cargo build --release -q --bin middleway
cargo build --release -q --manifest-path bench/Cargo.toml --target-dir target
mw=target/release/middleway mwbench=target/release/mwbench
rows=${ROWS:-100000} requests=${REQUESTS:-60000} concurrency=${CONCURRENCY:-64}

dir=$root/.local/bench-replicas
ports=(13316 13317 13318)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  for n in 0 1 2; do
    [ -f "$dir/$n/mysqld.pid" ] && kill "$(cat "$dir/$n/mysqld.pid")" 2>/dev/null || true
  done
}
trap cleanup EXIT
rm -rf "$dir" && mkdir -p "$dir"
root_sql() { mariadb --protocol=tcp -h127.0.0.1 -P"$1" -uroot -N -e "$2"; }
for n in 0 1 2; do
  mkdir -p "$dir/$n/tmp"
  mariadb-install-db --no-defaults --user=root --datadir="$dir/$n/data" --tmpdir="$dir/$n/tmp" \
    --auth-root-authentication-method=normal --skip-test-db >/dev/null 2>&1
  extra=(--server-id=$((n + 1)))
  [ "$n" = 0 ] && extra+=(--log-bin=primary-bin --binlog-format=ROW)
  /usr/sbin/mariadbd --no-defaults --user=root --datadir="$dir/$n/data" --tmpdir="$dir/$n/tmp" \
    --socket="$dir/$n/mysqld.sock" --pid-file="$dir/$n/mysqld.pid" --bind-address=127.0.0.1 \
    --port="${ports[$n]}" --skip-name-resolve --innodb-buffer-pool-size=256M \
    --innodb-flush-log-at-trx-commit=2 --log-error="$dir/$n/error.log" "${extra[@]}" >/dev/null 2>&1 &
  for _ in $(seq 1 100); do root_sql "${ports[$n]}" "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
  root_sql "${ports[$n]}" "CREATE USER 'middleway'@'127.0.0.1' IDENTIFIED BY 'middleway';
    GRANT ALL ON *.* TO 'middleway'@'127.0.0.1';"
done
# Replicas start from the primary's position (every server was set up alike).
position=$(root_sql "${ports[0]}" "SELECT @@GLOBAL.gtid_binlog_pos")
for n in 1 2; do
  root_sql "${ports[$n]}" "SET GLOBAL gtid_slave_pos = '$position';
    CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=${ports[0]}, MASTER_USER='middleway',
      MASTER_PASSWORD='middleway', MASTER_USE_GTID=slave_pos; START SLAVE;"
done
url() { echo "mysql://middleway:middleway@127.0.0.1:$1/middleway_bench"; }
root_sql "${ports[0]}" "CREATE DATABASE middleway_bench"
export DATABASE_URL
DATABASE_URL=$(url "${ports[0]}")
$mw migrate >/dev/null
log "seeding $rows rows on the primary"
$mw seed --rows "$rows" >/dev/null 2>&1
target=$(root_sql "${ports[0]}" "SELECT @@GLOBAL.gtid_binlog_pos")
for n in 1 2; do
  root_sql "${ports[$n]}" "SELECT MASTER_GTID_WAIT('$target', 300)" >/dev/null
done
# Warm every buffer pool alike.
for n in 0 1 2; do
  root_sql "${ports[$n]}" "SELECT COUNT(*), SUM(LENGTH(content)) FROM middleway_bench.transcriptions" >/dev/null
done

key="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
serve() { # PORT ADMIN_PORT [READ_URLS]
  DATABASE_READ_URLS=${3:-} API_KEYS="bench:$key" BIND_ADDR=127.0.0.1:$1 ADMIN_BIND_ADDR=127.0.0.1:$2 \
    REDIS_KEY_PREFIX="mwreplicas-$1:" RUST_LOG=warn $mw serve >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && break; sleep 0.1; done
}
serve 18500 19500
primary_only=${pids[-1]}
serve 18501 19501 "$(url "${ports[1]}"),$(url "${ports[2]}")"
with_replicas=${pids[-1]}
for _ in $(seq 1 100); do
  [ "$(curl -s http://127.0.0.1:19501/metrics | grep -c '^middleway_mysql_endpoint_serving{endpoint="replica-[12]"} 1')" = 2 ] && break
  sleep 0.1
done

ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{printf "%.6f", ($14 + $15) / t}' "/proc/$1/stat"; }
mariadb_pids=("$(cat "$dir/0/mysqld.pid")" "$(cat "$dir/1/mysqld.pid")" "$(cat "$dir/2/mysqld.pid")")
work=$(mktemp -d)
for round in $(seq 1 "${ROUNDS:-3}"); do
  order=(primary-only replicas); [ $((round % 2)) = 0 ] && order=(replicas primary-only)
  for setup in "${order[@]}"; do
    case $setup in
      primary-only) port=18500 admin=19500 pid=$primary_only ;;
      replicas) port=18501 admin=19501 pid=$with_replicas ;;
    esac
    log "round $round: $setup"
    before=(); for p in "${mariadb_pids[@]}"; do before+=("$(cpu_of "$p")"); done
    line=$($mwbench read-cpu --service 127.0.0.1:$port --admin 127.0.0.1:$admin --key "$key" --pid "$pid" \
      --rows "$rows" --concurrency "$concurrency" --requests "$requests")
    db=""
    for n in 0 1 2; do
      # read-cpu sends a tenth more as warm-up: the servers' CPU covers both.
      used=$(echo "($(cpu_of "${mariadb_pids[$n]}") - ${before[$n]}) * 1000000 / ($requests * 1.1)" | bc -l)
      db+=" db$n=$(printf '%.1f' "$used")"
    done
    echo "$line$db" >> "$work/$setup.txt"
  done
done
reads=$(curl -s http://127.0.0.1:19501/metrics | grep '^middleway_mysql_reads_total' || true)
echo "GET /transcriptions/{id} with and without two read replicas, $(date -u +%F), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), MariaDB $(mariadbd --version | awk '{print $3}'); ${ROUNDS:-3} rounds of $requests GETs at $concurrency callers over $rows rows, medians"
python3 - "$work" <<'PY'
import re, statistics, sys
work = sys.argv[1]
print("| setup | GET/s | service CPU per GET | primary CPU per GET | replica 1 | replica 2 | failures |")
print("|---|---|---|---|---|---|---|")
for setup in ("primary-only", "replicas"):
    lines = open(f"{work}/{setup}.txt").read().splitlines()
    get = lambda name: statistics.median(float(re.search(name + r"=([\d.]+)", l).group(1)) for l in lines)
    failures = ", ".join(re.search(r"failures=(\S+)", l).group(1) for l in lines)
    cells = [f"{get('throughput'):,.0f}", f"{get('per_get'):.1f} µs"] + [f"{get(db):.1f} µs" for db in ("db0", "db1", "db2")]
    print(f"| {setup} | " + " | ".join(cells) + f" | {failures} |")
PY
echo "Reads by endpoint (the service with replicas):"
echo "$reads" | sed 's/^/  /'
