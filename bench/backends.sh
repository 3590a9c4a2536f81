#!/usr/bin/env bash
# Production backends (issue 11), one command:
#   bench/backends.sh          prints the numbers bench/README.md "Production backends" quotes
#   REQUESTS=5000 bench/backends.sh   a shorter run
#   ONLY=locks bench/backends.sh      (or ONLY=reads) one half
#   MW=.local/middleway-baseline bench/backends.sh   another build of the service
#
# Locks: acquire+release pairs/s (64 callers over 1,000 names, best of 2) and
# hand-off latency (100 waiters on one name) against
#   - one redis-server,
#   - a Redis Cluster of 3 primaries + 3 replicas (REDIS_MODE=cluster),
#   - one primary with one replica, LOCK_REPLICA_ACKS=0 and then 1.
# Reads: the service's CPU per GET and GET/s (64 keep-alive callers) from one
# MariaDB that offers TLS, connected in plain text (ssl-mode=disabled) and
# over TLS (ssl-mode=verify_identity with the CA file).
# Every server here is a throwaway started on loopback under .local/bench-backends.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "backends: $*" >&2; }

scripts/services.sh start
eval "$(scripts/services.sh env)"
log "building (release)"
cargo build --release -q --bin middleway
cargo build --release -q --manifest-path bench/Cargo.toml --target-dir target
mw=${MW:-$root/target/release/middleway}  # MW=path: another build of the service
mwbench=$root/target/release/mwbench
requests=${REQUESTS:-50000}

work=$root/.local/bench-backends
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
rm -rf "$work" && mkdir -p "$work"
key="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

redis_node() { # PORT [ARGS...]: a throwaway redis-server without persistence
  local port=$1; shift
  mkdir -p "$work/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work/redis-$port" "$@" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done
  log "redis-server $port did not start"; exit 1
}

service=127.0.0.1:18300
admin=127.0.0.1:19300
serve() { # VAR=VALUE...: one replica with this environment; sets $svc
  env API_KEYS="bench:$key" BIND_ADDR=$service ADMIN_BIND_ADDR=$admin RUST_LOG=warn "$@" \
    "$mw" serve >/dev/null 2>&1 &
  svc=$!
  for _ in $(seq 200); do curl -sf "http://$service/readyz" >/dev/null && return; sleep 0.05; done
  log "service did not get ready ($*)"; exit 1
}
stop() { kill "$svc"; wait "$svc" 2>/dev/null || true; }
target=(--service "$service" --admin "$admin" --key "$key")

locks() { # LABEL REDIS_URL VAR=VALUE...: pairs/s and hand-off against this Redis
  local label=$1 url=$2; shift 2
  serve DATABASE_URL="$DATABASE_URL" REDIS_URL="$url" REDIS_KEY_PREFIX="mwb-$label:" "$@"
  echo "== locks: $label"
  "$mwbench" locks "${target[@]}" --redis-url "${url%%,*}" --strategies middleway \
    --concurrency 64 --names 1000 --requests "$requests" --runs 2 --out "$work/cells.jsonl" 2>&1 | grep middleway
  "$mwbench" handoff "${target[@]}" --waiters 100 --handoffs 2000
  stop
}

only=${ONLY:-all}
if [ "$only" != reads ]; then
log "starting Redis: one server, a primary with a replica, a 6-node cluster"
redis_node 17100
redis_node 17110
redis_node 17111 --replicaof 127.0.0.1 17110
cluster_ports=(17101 17102 17103 17104 17105 17106)
for port in "${cluster_ports[@]}"; do
  redis_node "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") \
  --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 200); do
  [[ $(redis-cli -p 17101 cluster info) == *cluster_state:ok* ]] && break; sleep 0.05
done
seeds=$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}"); seeds=${seeds%,}

locks single redis://127.0.0.1:17100/0
locks cluster "$seeds" REDIS_MODE=cluster
locks replica-acks-0 redis://127.0.0.1:17110/0
locks replica-acks-1 redis://127.0.0.1:17110/0 LOCK_REPLICA_ACKS=1
fi
[ "$only" = locks ] && exit 0

log "starting a MariaDB that offers TLS, with a CA made here"
certs=$work/certs
mkdir -p "$certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$certs/ca-key.pem" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
  -keyout "$certs/server-key.pem" -out "$certs/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$certs/ext"
openssl x509 -req -days 2 -in "$certs/server.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" \
  -CAcreateserial -extfile "$certs/ext" -out "$certs/server.pem" 2>/dev/null
mdb=$work/mariadb
mkdir -p "$mdb/tmp"
mariadb-install-db --no-defaults --user=root --auth-root-authentication-method=normal \
  --skip-test-db --datadir="$mdb/data" --tmpdir="$mdb/tmp" >/dev/null 2>&1
/usr/sbin/mariadbd --no-defaults --user=root --bind-address=127.0.0.1 --port=13307 \
  --datadir="$mdb/data" --socket="$mdb/sock" --tmpdir="$mdb/tmp" --log-error="$mdb/error.log" \
  --innodb-buffer-pool-size=256M --ssl-ca="$certs/ca.pem" --ssl-cert="$certs/server.pem" \
  --ssl-key="$certs/server-key.pem" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do mariadb -h127.0.0.1 -P13307 -uroot -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb -h127.0.0.1 -P13307 -uroot -e "CREATE DATABASE bench; CREATE USER 'middleway'@'127.0.0.1' IDENTIFIED BY 'middleway'; GRANT ALL ON bench.* TO 'middleway'@'127.0.0.1';"
rows=200000
plain="mysql://middleway:middleway@127.0.0.1:13307/bench?ssl-mode=disabled"
DATABASE_URL=$plain "$mw" migrate >/dev/null
DATABASE_URL=$plain "$mw" seed --rows $rows >/dev/null 2>&1
mariadb -h127.0.0.1 -P13307 -uroot bench -e "SELECT COUNT(*), SUM(LENGTH(content)) FROM transcriptions" >/dev/null

tls_accepts() { mariadb -N -h127.0.0.1 -P13307 -uroot -e "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'" | awk '{print $2}'; }
for mode in plain tls; do
  url=$plain
  [ "$mode" = tls ] && url="mysql://middleway:middleway@127.0.0.1:13307/bench?ssl-mode=verify_identity&ssl-ca=$certs/ca.pem"
  before=$(tls_accepts)
  serve DATABASE_URL="$url" REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="mwb-reads:" RUST_LOG=info LOG_FORMAT=json
  echo "== reads: $mode"
  "$mwbench" read-cpu "${target[@]}" --pid "$svc" --rows $rows --concurrency 64 --requests "$requests"
  stop
  echo "   TLS handshakes MariaDB accepted during the run: $(( $(tls_accepts) - before ))"
done
