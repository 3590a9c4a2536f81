#!/usr/bin/env bash
# Throwaway MariaDB and Redis for development, tests and benchmarks.
#
#   scripts/services.sh start   install (if missing) and start both, print their URLs
#   scripts/services.sh stop    stop both (data stays under .local/ until `clean`)
#   scripts/services.sh clean   stop and delete .local/
#   scripts/services.sh env     print the export lines the tests and `make run` use
#
# Both listen on loopback only, on ports of their own so they never collide
# with a system MariaDB/Redis. Data lives under .local/ (git-ignored).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.local"
mysql_port=${MW_MYSQL_PORT:-13306}
redis_port=${MW_REDIS_PORT:-16379}
mysql_dir="$state/mariadb"
redis_dir="$state/redis"
mysql_sock="$mysql_dir/mysqld.sock"

log() { echo "services: $*" >&2; }

install_missing() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server mariadb-client)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian's packages"
    # The packages try to start system-wide services; we run our own instances.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

mysql_up() { mariadb-admin --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uroot ping >/dev/null 2>&1; }
redis_up() { redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; }

start_mysql() {
  if mysql_up; then return; fi
  mkdir -p "$mysql_dir"
  if [ ! -d "$mysql_dir/data/mysql" ]; then
    log "initialising MariaDB data in $mysql_dir/data"
    mariadb-install-db --no-defaults --user=root --datadir="$mysql_dir/data" \
      --auth-root-authentication-method=normal --skip-test-db >"$mysql_dir/install.log" 2>&1
  fi
  # max_connections=170 matches a db.t4g.medium Aurora: the limit middleway exists to respect.
  nohup setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$mysql_dir/data" \
    --socket="$mysql_sock" --pid-file="$mysql_dir/mysqld.pid" \
    --bind-address=127.0.0.1 --port="$mysql_port" --max-connections=170 \
    --skip-name-resolve --innodb-buffer-pool-size=1G --innodb-flush-log-at-trx-commit=2 \
    --log-error="$mysql_dir/error.log" </dev/null >/dev/null 2>&1 &
  disown 2>/dev/null || true
  for _ in $(seq 1 100); do mysql_up && break; sleep 0.2; done
  mysql_up || { log "MariaDB did not start; see $mysql_dir/error.log"; exit 1; }
  # The root account is passwordless on loopback only; create the app user the URLs name.
  mariadb --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uroot -e "
    CREATE USER IF NOT EXISTS 'middleway'@'127.0.0.1' IDENTIFIED BY 'middleway';
    GRANT ALL PRIVILEGES ON *.* TO 'middleway'@'127.0.0.1' WITH GRANT OPTION;
    CREATE DATABASE IF NOT EXISTS middleway;"
}

start_redis() {
  if redis_up; then return; fi
  mkdir -p "$redis_dir"
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$redis_dir" \
    --save '' --appendonly no --daemonize yes --maxclients 20000 \
    --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { log "Redis did not start; see $redis_dir/redis.log"; exit 1; }
}

print_env() {
  cat <<ENV
export DATABASE_URL=mysql://middleway:middleway@127.0.0.1:$mysql_port/middleway
export REDIS_URL=redis://127.0.0.1:$redis_port/0
export TEST_MYSQL_ADMIN_URL=mysql://middleway:middleway@127.0.0.1:$mysql_port
export TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0
ENV
}

stop_all() {
  if [ -f "$mysql_dir/mysqld.pid" ]; then
    mariadb-admin --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uroot shutdown 2>/dev/null || true
  fi
  if redis_up; then redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
}

case "${1:-start}" in
  start)
    install_missing
    # Ulimit for the fd-hungry tests (10,000 keep-alive connections) and MariaDB.
    ulimit -n 65536 2>/dev/null || true
    start_mysql
    start_redis
    log "MariaDB on 127.0.0.1:$mysql_port, Redis on 127.0.0.1:$redis_port"
    ;;
  stop) stop_all ;;
  clean) stop_all; sleep 1; rm -rf "$state" ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|clean|env" >&2; exit 2 ;;
esac
