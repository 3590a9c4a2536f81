// The CommonJS build works from require().
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Middleway, LockTimeout } = require('../dist/cjs/index.js');

let service;
before(async () => {
  service = await (await import('./service.mjs')).startService();
});
after(() => service.stop());

test('require() gives the same client', async () => {
  const { KEY } = await import('./service.mjs');
  const mw = new Middleway({ url: service.url, key: KEY });
  assert.equal((await mw.transcription(2)).transcription_id, 2);
  assert.equal(typeof LockTimeout, 'function');
});
