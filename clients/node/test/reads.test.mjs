import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { DeadlineExceeded, Middleway, InvalidRequest, Unauthorized, Unavailable } from '../dist/esm/index.js';
import { KEY, startService } from './service.mjs';

let service;
before(async () => {
  service = await startService();
});
after(() => service.stop());

test('a transcription is an object, a missing one null', async () => {
  const mw = new Middleway({ url: service.url, key: KEY });
  const row = await mw.transcription(7);
  assert.equal(row.transcription_id, 7);
  assert.equal(typeof row.call_id, 'string');
  assert.equal(await mw.transcription(999999), null);
});

test('a batch comes back in the order asked with the missing ids', async () => {
  const mw = new Middleway({ url: service.url, key: KEY });
  const batch = await mw.transcriptions([9, 999999, 3]);
  assert.deepEqual(batch.transcriptions.map((t) => t.transcription_id), [9, 3]);
  assert.deepEqual(batch.missing, [999999]);
});

test('bad input is InvalidRequest naming the field; a wrong key is Unauthorized', async () => {
  const mw = new Middleway({ url: service.url, key: KEY });
  await assert.rejects(mw.transcription('07'), (e) => e instanceof InvalidRequest && e.fields[0].field === 'id' && e.status === 400);
  await assert.rejects(mw.transcriptions([1, 1]), (e) => e instanceof InvalidRequest && e.fields[0].field === 'ids');
  const wrong = new Middleway({ url: service.url, key: 'wrong-key-0123456789' });
  await assert.rejects(wrong.transcription(1), (e) => e instanceof Unauthorized && e.status === 401);
});

test('a killed service: Unavailable once the retries are spent, DeadlineExceeded when the deadline comes first', async () => {
  const doomed = await startService();
  doomed.stop();
  await new Promise((r) => doomed.child.once('exit', r));
  const few = new Middleway({ url: doomed.url, key: KEY, retries: 2 });
  await assert.rejects(few.transcription(1, { deadlineMs: 5000 }), Unavailable);
  const many = new Middleway({ url: doomed.url, key: KEY, retries: 100 });
  const started = Date.now();
  await assert.rejects(
    many.transcription(1, { deadlineMs: 1500 }),
    (e) => e instanceof DeadlineExceeded && e.cause instanceof Unavailable,
  );
  assert.ok(Date.now() - started < 2500, `took ${Date.now() - started} ms`);
});

test('a shedding replica is retried after Retry-After', async () => {
  const busy = await startService({ MAX_IN_FLIGHT: '1' });
  try {
    const retries = [];
    const mw = new Middleway({ url: busy.url, key: KEY, onRetry: (r) => retries.push(r) });
    // The one in-flight slot: an acquire waiting 1.2 s on a held lock.
    const name = 'shed-test';
    await mw.acquire(name, { leaseMs: 5000 });
    const waiting = mw.acquire(name, { waitMs: 1200 }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 200));
    const row = await mw.transcription(5);
    assert.equal(row.transcription_id, 5);
    assert.ok(retries.length >= 1, 'retried');
    assert.equal(retries[0].status, 503);
    assert.ok(retries[0].delayMs >= 1000, `waited ${retries[0].delayMs} ms, Retry-After is 1 s`);
    assert.equal((await waiting).name, 'LockTimeout');
  } finally {
    busy.stop();
  }
});

test("the caller's traceparent is sent", async () => {
  const seen = [];
  const probe = createServer((req, res) => {
    seen.push(req.headers.traceparent);
    res.writeHead(404, { 'content-type': 'application/problem+json' }).end('{}');
  });
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  const mw = new Middleway({ url: `http://127.0.0.1:${probe.address().port}`, key: KEY, traceparent: () => traceparent });
  assert.equal(await mw.transcription(1), null);
  probe.close();
  assert.deepEqual(seen, [traceparent]);
});
