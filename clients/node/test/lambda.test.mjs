// What a Lambda function needs from a client made once, in module scope:
// each invocation's own deadline, a distinct DeadlineExceeded, a body's
// result kept when the final release fails, exact ids past 2^53, and a
// private CA for an HTTPS service.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import {
  DeadlineExceeded,
  LockTimeout,
  Middleway,
  Unavailable,
} from '../dist/esm/index.js';
import { KEY, sql, startService, testCertificates, uniqueName } from './service.mjs';

/** Lambda's context, as the Node runtime gives it: time left until `endsAt`. */
const contextEndingIn = (ms) => {
  const endsAt = Date.now() + ms;
  return { getRemainingTimeInMillis: () => endsAt - Date.now() };
};

let service;
before(async () => {
  service = await startService();
});
after(() => service.stop());

test('one module-scope client honours each invocation its own context', async () => {
  const mw = new Middleway({ url: service.url, key: KEY });
  const name = uniqueName('ctx');
  const held = await mw.acquire(name, { leaseMs: 10_000 });

  // Invocation 1 has 800 ms left: its 5 s wait is cut to fit.
  let started = Date.now();
  await assert.rejects(mw.acquire(name, { waitMs: 5000, context: contextEndingIn(800) }), LockTimeout);
  assert.ok(Date.now() - started < 800, `answered within the invocation (${Date.now() - started} ms)`);

  // Invocation 2, same client, has 10 s: it waits, and gets the slot when freed.
  started = Date.now();
  const next = mw.acquire(name, { waitMs: 5000, context: contextEndingIn(10_000) });
  setTimeout(() => mw.release(name, held.token), 1200);
  const granted = await next;
  assert.ok(Date.now() - started >= 1000, 'it waited past invocation 1\'s end');
  assert.ok(granted.fence > held.fence);
  await mw.release(name, granted.token);
});

test('a deadline that passes is DeadlineExceeded, not Unavailable', async () => {
  // A service that accepts and never answers.
  const silent = createServer(() => {}).listen(0, '127.0.0.1');
  await new Promise((r) => silent.once('listening', r));
  const mw = new Middleway({ url: `http://127.0.0.1:${silent.address().port}`, key: KEY, timeoutMs: 5000 });
  try {
    const started = Date.now();
    await assert.rejects(mw.transcription(1, { context: contextEndingIn(900) }), (error) => {
      assert.ok(error instanceof DeadlineExceeded, `${error.name}: ${error.message}`);
      assert.ok(!(error instanceof Unavailable));
      return true;
    });
    const took = Date.now() - started;
    assert.ok(took >= 500 && took < 900, `ended 250 ms before the invocation (${took} ms)`);
    await assert.rejects(
      mw.acquire('never', { waitMs: 100, deadlineMs: 400 }),
      (error) => error instanceof DeadlineExceeded && error.outcomeUnknown === true,
    );
  } finally {
    silent.close();
  }
});

test('withLock returns the body\'s result when the final release fails, and says so', async () => {
  const own = await startService();
  const failures = [];
  const mw = new Middleway({
    url: own.url,
    key: KEY,
    retries: 1,
    onReleaseError: (error, lock) => failures.push({ error, lock }),
  });
  const result = await mw.withLock(uniqueName('release-fails'), { leaseMs: 10_000 }, async () => {
    own.stop(); // the service goes away while the body runs
    await new Promise((r) => own.child.once('exit', r));
    return 'the body\'s work';
  });
  assert.equal(result, 'the body\'s work');
  assert.equal(failures.length, 1);
  assert.ok(failures[0].error instanceof Unavailable, String(failures[0].error));
  assert.equal(typeof failures[0].lock.token, 'string');
});

test('ids above 2^53 come back exactly, as bigint', async () => {
  const big = 9007199254740993n; // 2^53 + 1: a double cannot hold it
  sql(`REPLACE INTO transcriptions (transcription_id, call_id, language, status, created_at, updated_at)
       VALUES (${big}, 'big-call', 'en', 'completed', NOW(3), NOW(3))`);
  const mw = new Middleway({ url: service.url, key: KEY });
  const row = await mw.transcription(big);
  assert.equal(row.transcription_id, big);
  assert.equal(row.call_id, 'big-call');
  const batch = await mw.transcriptions([big, big + 2n, 7]);
  assert.deepEqual(batch.transcriptions.map((t) => t.transcription_id), [big, 7]);
  assert.deepEqual(batch.missing, [big + 2n]);
  assert.equal(typeof batch.transcriptions[1].transcription_id, 'number', 'small ids stay numbers');
});

test('an HTTPS service with a private CA: trusted with `ca`, refused without', async () => {
  const certs = testCertificates();
  const tls = await startService({ TLS_CERT_FILE: certs.certFile, TLS_KEY_FILE: certs.keyFile });
  try {
    assert.ok(tls.url.startsWith('https://'));
    const trusted = new Middleway({ url: tls.url, key: KEY, ca: certs.caPem });
    assert.equal((await trusted.transcription(7)).transcription_id, 7);
    const lock = await trusted.acquire(uniqueName('tls'));
    await trusted.release(lock.name, lock.token);

    const untrusted = new Middleway({ url: tls.url, key: KEY, retries: 0 });
    await assert.rejects(untrusted.transcription(7), Unavailable);
  } finally {
    tls.stop();
  }
});
