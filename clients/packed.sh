#!/usr/bin/env bash
# The clients as a user gets them (run by .ci/run): the Node package packed
# (`npm pack`) and installed from that tarball and from the folder, the
# Python wheel built and installed into a fresh venv; each then imported
# (ESM, CommonJS, typed) and used against a real service: a read and a
# lock acquired and released.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
work=$(mktemp -d)
cargo build -q --bin middleway
bin="$root/target/debug/middleway"

# A service with a database of its own and 10 rows.
db="mwpacked_$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mysql_cli=(mariadb -N -h127.0.0.1 -P13306 -umiddleway -pmiddleway)
"${mysql_cli[@]}" -e "CREATE DATABASE $db"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DATABASE_URL="$TEST_MYSQL_ADMIN_URL/$db"
"$bin" migrate >/dev/null 2>&1
"$bin" seed --rows 10 >/dev/null 2>&1
API_KEYS="packed:packed-key-0123456789" BIND_ADDR="127.0.0.1:$port" ADMIN_BIND_ADDR="127.0.0.1:$admin" \
  REDIS_KEY_PREFIX="mwpacked:$db:" RUST_LOG=warn "$bin" serve >"$work/service.log" 2>&1 &
service=$!
trap 'kill $service 2>/dev/null; "${mysql_cli[@]}" -e "DROP DATABASE IF EXISTS $db"; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
export MW_URL="http://127.0.0.1:$port" MW_KEY="packed-key-0123456789"

# --- Node: the packed tarball, and the folder (a clean copy: no dist, no node_modules).
(cd clients/node && npm pack --silent --pack-destination "$work" >/dev/null)
tarball=$(ls "$work"/middleway-client-*.tgz)
tar -tzf "$tarball" > "$work/contents"
for f in package/dist/esm/index.js package/dist/esm/index.d.ts package/dist/cjs/index.js package/dist/cjs/index.d.ts package/LICENSE-MIT package/LICENSE-APACHE; do
  grep -qx "$f" "$work/contents" || { echo "packed-clients: $f missing from $tarball" >&2; exit 1; }
done
mkdir "$work/copy"
(cd clients/node && git ls-files | xargs -I{} cp --parents {} "$work/copy/")
cat > "$work/smoke.mjs" <<'JS'
import { Middleway } from 'middleway-client';
const mw = new Middleway({ url: process.env.MW_URL, key: process.env.MW_KEY });
const row = await mw.transcription(7);
if (row.transcription_id !== 7) throw new Error(`read ${JSON.stringify(row)}`);
const lock = await mw.acquire(`packed-esm-${process.pid}`);
await mw.release(lock.name, lock.token);
console.log('esm ok');
JS
cat > "$work/smoke.cjs" <<'JS'
const { Middleway, DeadlineExceeded } = require('middleway-client');
(async () => {
  const mw = new Middleway({ url: process.env.MW_URL, key: process.env.MW_KEY });
  const batch = await mw.transcriptions([1, 2, 99999]);
  if (batch.transcriptions.length !== 2 || typeof DeadlineExceeded !== 'function') throw new Error('cjs');
  console.log('cjs ok');
})();
JS
cat > "$work/smoke.ts" <<'TS'
import { Middleway, type Lock } from 'middleway-client';
const mw: Middleway = new Middleway({ url: 'http://x', key: 'k', ca: undefined });
const take = async (): Promise<Lock> => mw.acquire('n', { waitMs: 1, context: { getRemainingTimeInMillis: () => 1000 } });
void take;
TS
for source in "$tarball" "$work/copy"; do
  project="$work/project-$( [ -d "$source" ] && echo folder || echo tarball )"
  mkdir "$project"
  (
    cd "$project"
    npm init -y >/dev/null
    npm install --silent --no-audit --no-fund "$source" typescript@5.9.3 @types/node@20 >/dev/null
    cp "$work"/smoke.* .
    node smoke.mjs
    node smoke.cjs
    npx tsc --noEmit --strict --module nodenext --moduleResolution nodenext smoke.ts
    echo "node package from the $(basename "$project" | cut -d- -f2): types ok"
  )
done

# --- Python: a wheel, installed into a fresh venv with its dependencies.
python3 -m pip wheel -q --no-deps -w "$work/wheel" clients/python
wheel=$(ls "$work"/wheel/middleway_client-*.whl)
# Read the member list in Python: piping it into grep -q lets grep exit at the
# first match, and the writer's broken pipe then fails the pipeline.
python3 -c 'import sys, zipfile; sys.exit("middleway_client/py.typed" not in zipfile.ZipFile(sys.argv[1]).namelist())' "$wheel" \
  || { echo "packed-clients: py.typed missing from the wheel" >&2; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
(cd "$work" && "$work/venv/bin/python" - <<'PY'
import asyncio, os
from middleway_client import AsyncMiddleway, DeadlineExceeded, Middleway
with Middleway(os.environ["MW_URL"], os.environ["MW_KEY"]) as mw:
    assert mw.transcription(7)["transcription_id"] == 7
    with mw.lock(f"packed-py-{os.getpid()}") as lock:
        assert lock.fence > 0
async def main():
    async with AsyncMiddleway(os.environ["MW_URL"], os.environ["MW_KEY"]) as mw:
        assert len((await mw.transcriptions([1, 2])).transcriptions) == 2
asyncio.run(main())
print("python wheel ok")
PY
)
echo "packed-clients: the npm tarball, the folder and the wheel install and work"
