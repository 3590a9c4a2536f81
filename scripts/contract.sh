#!/usr/bin/env bash
# Fuzzes the live service against its own OpenAPI document with schemathesis:
# no 5xx, no response outside the schema. Used by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v schemathesis >/dev/null 2>&1 || pip install -q schemathesis
scripts/services.sh start
eval "$(scripts/services.sh env)"
db="mw_contract"
mariadb -h127.0.0.1 -P13306 -umiddleway -pmiddleway -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/$db"
cargo build -q --bin middleway
./target/debug/middleway migrate >/dev/null
./target/debug/middleway seed --rows 200 >/dev/null 2>&1
key="contract-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
port=18080
API_KEYS="contract:$key" BIND_ADDR=127.0.0.1:$port ADMIN_BIND_ADDR=127.0.0.1:19090 \
  REDIS_KEY_PREFIX="mwcontract:$RANDOM:" RUST_LOG=warn ./target/debug/middleway serve &
service=$!
trap 'kill $service 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
cd tests/contract
SCHEMATHESIS_HOOKS=hooks PYTHONPATH=. schemathesis --config-file schemathesis.toml run \
  "http://127.0.0.1:$port/openapi.json" -H "Authorization: Bearer $key" \
  --checks all --max-examples 200 --request-timeout 15 --no-color
