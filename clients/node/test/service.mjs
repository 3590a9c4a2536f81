// Starts real middleway processes for the tests (clients/test.sh sets MW_BIN,
// DATABASE_URL and REDIS_URL) and talks to the test database for the fenced store.
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';

export const KEY = 'client-tests-key-0123456789';

export async function freePort() {
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
  const tls = env.TLS_CERT_FILE !== undefined;
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      if (tls ? await tlsAnswers(port) : (await fetch(`${url}/readyz`)).ok) break;
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

/** Whether a TLS handshake on `port` succeeds (the CA is not checked here). */
function tlsAnswers(port) {
  return new Promise((resolve) => {
    const socket = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
      socket.end();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

/**
 * A CA and a certificate it signed for 127.0.0.1 (openssl), in a scratch
 * folder: `{ caPem, certFile, keyFile }`.
 */
export function testCertificates() {
  const dir = mkdtempSync(join(tmpdir(), 'mw-tls-'));
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=middleway client test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1',
    '-keyout', 'server.key', '-out', 'server.csr');
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-days', '1', '-extfile', 'ext.cnf', '-out', 'server.pem');
  return {
    caPem: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    certFile: join(dir, 'server.pem'),
    keyFile: join(dir, 'server.key'),
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
