#!/usr/bin/env bash
# The client libraries' tests, against the real service (part of `make test`).
# Installs Node's dev dependencies and Python's test dependencies when missing,
# builds the service, gives the tests a database with 50 seeded rows, then
# runs `node --test` (clients/node) and `pytest` (clients/python). Each test
# starts the service processes it needs from $MW_BIN.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"

cargo build -q --bin middleway
export MW_BIN="$root/target/debug/middleway"
export MW_DB="mwclients_$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mysql_cli=(mariadb -N -h127.0.0.1 -P13306 -umiddleway -pmiddleway)
"${mysql_cli[@]}" -e "CREATE DATABASE $MW_DB"
trap '"${mysql_cli[@]}" -e "DROP DATABASE IF EXISTS $MW_DB"' EXIT
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/$MW_DB"
"$MW_BIN" migrate >/dev/null 2>&1
"$MW_BIN" seed --rows 50 >/dev/null 2>&1
export REDIS_URL MW_MYSQL_ARGS="-N -h127.0.0.1 -P13306 -umiddleway -pmiddleway $MW_DB"

(
  cd clients/node
  [ -d node_modules ] || npm ci --no-audit --no-fund --silent
  npm test --silent
)
(
  cd clients/python
  python3 -c 'import httpx, pytest, pytest_asyncio, botocore, boto3, joserfc' 2>/dev/null && command -v moto_server >/dev/null ||
    python3 -m pip install -q 'httpx>=0.27,<1' 'pytest>=8' 'pytest-asyncio>=0.23' 'botocore>=1.31' 'moto[server]>=5' 'joserfc>=1'
  python3 -m pytest -q -p no:cacheprovider tests
)
