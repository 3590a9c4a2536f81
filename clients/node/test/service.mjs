// Starts real middleway processes for the tests (clients/test.sh sets MW_BIN,
// DATABASE_URL and REDIS_URL) and talks to the test database for the fenced store.
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';

export const KEY = 'client-tests-key-0123456789';

async function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A middleway process on free ports; `env` overrides its settings. */
export async function startService(env = {}) {
  const [port, admin] = [await freePort(), await freePort()];
  const child = spawn(process.env.MW_BIN, ['serve'], {
    env: {
      ...process.env,
      BIND_ADDR: `127.0.0.1:${port}`,
      ADMIN_BIND_ADDR: `127.0.0.1:${admin}`,
      API_KEYS: `clients:${KEY}`,
      REDIS_KEY_PREFIX: `mwclients:${randomBytes(4).toString('hex')}:`,
      RUST_LOG: 'warn',
      ...env,
    },
    stdio: 'ignore',
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    child,
    stop: () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

export function uniqueName(prefix) {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** One statement through the mariadb CLI against the test database; its output. */
export function sql(statement) {
  const args = process.env.MW_MYSQL_ARGS.split(' ');
  return execFileSync('mariadb', [...args, '-e', statement], { encoding: 'utf8' }).trim();
}

/**
 * The fenced toy store: a row that only accepts a write carrying a fence
 * higher than the last one it accepted. Returns true when the write landed.
 */
export function fencedWrite(key, fence, value) {
  sql('CREATE TABLE IF NOT EXISTS fenced_store (k VARCHAR(64) PRIMARY KEY, fence BIGINT UNSIGNED NOT NULL, value VARCHAR(64) NOT NULL)');
  sql(`INSERT IGNORE INTO fenced_store VALUES ('${key}', 0, '')`);
  const changed = sql(`UPDATE fenced_store SET value = '${value}', fence = ${fence} WHERE k = '${key}' AND fence < ${fence}; SELECT ROW_COUNT()`);
  return changed === '1';
}

export function storedValue(key) {
  return sql(`SELECT value FROM fenced_store WHERE k = '${key}'`);
}
