import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { DeadlineExceeded, Middleway, LockLost, LockTimeout, NotHeld, Unavailable } from '../dist/esm/index.js';
import { KEY, fencedWrite, startService, storedValue, uniqueName } from './service.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let service;
let mw;
before(async () => {
  service = await startService();
  mw = new Middleway({ url: service.url, key: KEY });
});
after(() => service.stop());

test('acquire, hand the token on, release; a repeated release still succeeds', async () => {
  const name = uniqueName('handoff');
  const lock = await mw.acquire(name, { waitMs: 0, leaseMs: 600000 });
  assert.ok(lock.fence > 0 && lock.token.length > 0);
  // Another instance (the asynchronous job) releases with the token.
  const job = new Middleway({ url: service.url, key: KEY });
  await job.release(name, lock.token);
  await job.release(name, lock.token); // reason `released`: success
  const state = await mw.inspect(name, lock.token);
  assert.equal(state.token_held, false);
  assert.equal(state.reason, 'released');
});

test('423 is LockTimeout and never retried', async () => {
  const name = uniqueName('busy');
  const retries = [];
  const client = new Middleway({ url: service.url, key: KEY, onRetry: (r) => retries.push(r) });
  await client.acquire(name, { leaseMs: 5000 });
  await assert.rejects(client.acquire(name, { waitMs: 0 }), (e) => e instanceof LockTimeout && e.status === 423);
  assert.deepEqual(retries, []);
});

test('a wait is capped by the time the function has left', async () => {
  const name = uniqueName('deadline');
  await mw.acquire(name, { leaseMs: 10000 });
  const lambda = new Middleway({ url: service.url, key: KEY, remainingTimeMs: () => 1200 });
  const started = Date.now();
  await assert.rejects(lambda.acquire(name, { waitMs: 8000 }), LockTimeout);
  const took = Date.now() - started;
  assert.ok(took < 2000, `waited ${took} ms with 1.2 s left`);
});

test('an expired token is NotHeld with reason expired', async () => {
  const name = uniqueName('expire');
  const lock = await mw.acquire(name, { leaseMs: 150 });
  await sleep(400);
  await assert.rejects(mw.extend(name, lock.token, 1000), (e) => e instanceof NotHeld && e.reason === 'expired');
});

test('withLock keeps a 300 ms lease through a 2 s body, then releases', async () => {
  const name = uniqueName('keep');
  const other = new Middleway({ url: service.url, key: KEY });
  let fence;
  const result = await mw.withLock(name, { waitMs: 0, leaseMs: 300 }, async (lock, signal) => {
    fence = lock.fence;
    const until = Date.now() + 2000;
    while (Date.now() < until) {
      await assert.rejects(other.acquire(name, { waitMs: 0 }), LockTimeout);
      const state = await other.inspect(name);
      assert.equal(state.held, 1);
      assert.deepEqual(state.holders.map((h) => h.fence), [fence]);
      await sleep(100);
    }
    assert.equal(signal.aborted, false);
    return 'done';
  });
  assert.equal(result, 'done');
  assert.equal((await other.inspect(name)).held, 0, 'released at the end');
});

test('withLock aborts its signal when the grant is released elsewhere', async () => {
  const name = uniqueName('stolen');
  const other = new Middleway({ url: service.url, key: KEY });
  const outcome = mw.withLock(name, { waitMs: 0, leaseMs: 300 }, async (lock, signal) => {
    await other.release(name, lock.token);
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    assert.ok(signal.reason instanceof LockLost);
    return 'body saw the loss';
  });
  await assert.rejects(outcome, (e) => e instanceof LockLost && e.reason === 'released');
});

test('a worker frozen past its lease learns it lost the lock, and the fenced store refuses its late write', async () => {
  const name = uniqueName('frozen');
  const storeKey = uniqueName('store');
  const child = spawn(process.execPath, [new URL('./fixtures/frozen-worker.mjs', import.meta.url).pathname, service.url, KEY, name, storeKey], {
    env: process.env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const said = [];
  createInterface({ input: child.stdout }).on('line', (line) => said.push(JSON.parse(line)));
  const saidLines = async (count) => {
    while (said.length < count) await sleep(10);
    return said[count - 1];
  };
  const acquired = await saidLines(1);
  child.kill('SIGSTOP');
  // While it is frozen, its 1 s lease runs out and someone else takes the lock.
  const mine = await mw.acquire(name, { waitMs: 3000, leaseMs: 5000 });
  assert.ok(mine.fence > acquired.acquired);
  assert.equal(fencedWrite(storeKey, mine.fence, 'new'), true);
  child.kill('SIGCONT');
  await new Promise((r) => child.once('exit', r));
  assert.equal(said.length, 3, JSON.stringify(said));
  assert.equal(said[1].write, 'refused');
  assert.deepEqual(said[2], { outcome: 'LockLost', reason: 'expired' });
  assert.equal(storedValue(storeKey), 'new');
  await mw.release(name, mine.token);
});

test('an acquire whose request may have reached a hung service is not retried', async () => {
  const hung = await startService();
  try {
    hung.child.kill('SIGSTOP');
    const retries = [];
    const client = new Middleway({ url: hung.url, key: KEY, onRetry: (r) => retries.push(r) });
    // Its one attempt ran into the deadline: the grant's fate is unknown.
    await assert.rejects(client.acquire(uniqueName('hung'), { deadlineMs: 1000 }), (e) => e instanceof DeadlineExceeded && e.outcomeUnknown === true);
    assert.deepEqual(retries, []);
    // With a deadline past one attempt's timeout, the acquire is still not retried.
    await assert.rejects(client.acquire(uniqueName('hung'), { deadlineMs: 3000 }), (e) => e instanceof Unavailable && e.outcomeUnknown === true);
    assert.deepEqual(retries, []);
    // A read is idempotent: it is retried until the deadline.
    await assert.rejects(client.transcription(1, { deadlineMs: 3000 }), (e) => e instanceof DeadlineExceeded && !e.outcomeUnknown);
    assert.ok(retries.length >= 1, 'the read was retried');
  } finally {
    hung.child.kill('SIGCONT');
    hung.stop();
  }
});
