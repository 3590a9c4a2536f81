// Credential providers against a real service: an OIDC token file read again
// when the kubelet swaps it (tokens from an issuer served here), and the
// function's AWS IAM identity, signed with the AWS SDK's signer and checked by
// moto's STS server (the service replays the signed request there).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AwsIam, Middleway, OidcTokenFile, StaticKey, Unauthorized } from '../dist/esm/index.js';
import { freePort, startService, uniqueName } from './service.mjs';

const AUDIENCE = 'middleway-clients';
const ACCOUNT = '123456789012';

/** An OIDC issuer on loopback: discovery and JWKS for one ES256 key. */
async function startIssuer() {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'ec-1', use: 'sig', alg: 'ES256' };
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const server = createServer((req, res) => {
    const body =
      req.url === '/.well-known/openid-configuration'
        ? { issuer: url, jwks_uri: `${url}/keys` }
        : req.url === '/keys'
          ? { keys: [jwk] }
          : null;
    res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body ?? {}));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return {
    url,
    token(subject) {
      const now = Math.floor(Date.now() / 1000);
      const input = `${b64({ alg: 'ES256', kid: 'ec-1', typ: 'JWT' })}.${b64({ iss: url, sub: subject, aud: AUDIENCE, iat: now, exp: now + 600 })}`;
      const signature = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
      return `${input}.${signature.toString('base64url')}`;
    },
    close: () => server.close(),
  };
}

/** moto's STS server; AssumeRole works unsigned until `checkSignatures()`. */
async function startSts() {
  const port = await freePort();
  const child = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}/`;
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${url}moto-api/`)).ok) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    async assumeRole(role) {
      const body = new URLSearchParams({
        Action: 'AssumeRole',
        Version: '2011-06-15',
        RoleArn: `arn:aws:iam::${ACCOUNT}:role/${role}`,
        RoleSessionName: role,
      });
      const answer = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: 'AWS4-HMAC-SHA256 Credential=AKIASETUP/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0',
        },
        body,
      });
      const xml = await answer.text();
      const field = (name) => xml.match(new RegExp(`<${name}>([^<]+)</${name}>`))[1];
      return { accessKeyId: field('AccessKeyId'), secretAccessKey: field('SecretAccessKey'), sessionToken: field('SessionToken') };
    },
    async checkSignatures() {
      await fetch(`${url}moto-api/reset-auth`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '0' });
    },
    stop: () => child.kill('SIGKILL'),
  };
}

let issuer, sts, service;
before(async () => {
  [issuer, sts] = await Promise.all([startIssuer(), startSts()]);
  const folder = mkdtempSync(join(tmpdir(), 'mw-auth-'));
  const authFile = join(folder, 'auth.toml');
  writeFileSync(
    authFile,
    `
[[principals]]
name = "ci"
oidc = { issuer = "${issuer.url}", subject = "ci" }
scopes = ["transcriptions:read"]

[[principals]]
name = "locker"
oidc = { issuer = "${issuer.url}", subject = "locker" }
scopes = ["locks:*"]

[[principals]]
name = "reports"
aws = { arn = "arn:aws:iam::${ACCOUNT}:role/reports-fn" }
scopes = ["transcriptions:read"]

[oidc."${issuer.url}"]
audience = "${AUDIENCE}"
`,
  );
  service = await startService({ AUTH_FILE: authFile, AUTH_AWS_AUDIENCE: AUDIENCE, AUTH_AWS_STS_ENDPOINTS: sts.url });
});
after(() => {
  service.stop();
  sts.stop();
  issuer.close();
});

/** The kubelet's update of a projected token: a new folder, then the `..data` symlink swapped. */
function swapToken(folder, token) {
  const data = `..${process.hrtime.bigint()}`;
  mkdirSync(join(folder, data));
  writeFileSync(join(folder, data, 'token'), token);
  symlinkSync(data, join(folder, '..data_tmp'));
  renameSync(join(folder, '..data_tmp'), join(folder, '..data'));
  if (!existsSync(join(folder, 'token'))) symlinkSync('..data/token', join(folder, 'token'));
}

test('an OIDC token file is read again when the kubelet rotates it', async () => {
  const folder = mkdtempSync(join(tmpdir(), 'mw-token-'));
  swapToken(folder, issuer.token('ci'));
  const mw = new Middleway({ url: service.url, key: new OidcTokenFile(join(folder, 'token')) });
  assert.equal(await mw.transcription(999_999_999), null); // authenticated as ci: 404, not 401 or 403
  swapToken(folder, issuer.token('locker'));
  const name = uniqueName('rotated');
  const lock = await mw.acquire(name, { leaseMs: 5000 }); // the locker's scopes
  await mw.release(name, lock.token);
  writeFileSync(join(folder, 'empty'), '');
  assert.throws(() => new OidcTokenFile(join(folder, 'empty')), /holds no token/);
});

test('a function authenticates with its IAM role, and its token is renewed before it ages out', async () => {
  const reports = await sts.assumeRole('reports-fn');
  const stranger = await sts.assumeRole('not-configured');
  await sts.checkSignatures(); // from here on moto checks every signature

  let clock = Date.now();
  const provider = new AwsIam({ audience: AUDIENCE, region: 'us-east-1', stsEndpoint: sts.url, credentials: async () => reports, now: () => clock });
  const mw = new Middleway({ url: service.url, key: provider });
  assert.equal(await mw.transcription(999_999_999), null);
  const first = await provider.bearer();
  assert.ok(first.startsWith('mw-aws-v1.'));
  assert.equal(await provider.bearer(), first, 'one token while it is young');
  clock += 1000;
  assert.equal(await provider.bearer(), first);
  // Ten minutes on (the service takes a token for 15): signed again, dated then.
  clock += 10 * 60 * 1000;
  const renewed = await provider.bearer();
  assert.notEqual(renewed, first);
  const signed = JSON.parse(Buffer.from(renewed.slice('mw-aws-v1.'.length), 'base64url').toString());
  assert.equal(signed.headers['x-amz-date'], new Date(clock).toISOString().replace(/[-:]|\.\d{3}/g, ''));

  // Credentials of a role no principal names: a clear Unauthorized.
  const other = new Middleway({ url: service.url, key: new AwsIam({ audience: AUDIENCE, stsEndpoint: sts.url, credentials: async () => stranger }) });
  await assert.rejects(other.transcription(1), Unauthorized);
  // The runtime's credential chain (here: the environment, as on Lambda).
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: reports.accessKeyId, AWS_SECRET_ACCESS_KEY: reports.secretAccessKey, AWS_SESSION_TOKEN: reports.sessionToken });
  const fromChain = new Middleway({ url: service.url, key: new AwsIam({ audience: AUDIENCE, region: 'us-east-1', stsEndpoint: sts.url }) });
  assert.equal(await fromChain.transcription(999_999_999), null);
  assert.throws(() => new StaticKey(''), TypeError);
});
