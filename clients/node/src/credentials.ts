/**
 * Who the client says it is: a static API key, an OIDC token read from a file
 * (Kubernetes projected service-account tokens, rotated by the kubelet), or
 * the function's own AWS IAM identity (no secret at all).
 *
 * A provider's `bearer()` gives the `Authorization: Bearer` value for the next
 * request; it is cheap per request (a file is read again only when it
 * changed, an IAM token is signed again only before it ages out).
 */
import { readFileSync, statSync } from 'node:fs';

export interface CredentialProvider {
  bearer(): string | Promise<string>;
}

/** An API key (`API_KEYS`, or a principal's `api_keys`). */
export class StaticKey implements CredentialProvider {
  readonly #key: string;

  constructor(key: string) {
    if (!key) throw new TypeError('an API key is required');
    this.#key = key;
  }

  bearer(): string {
    return this.#key;
  }
}

/**
 * A JWT kept in a file by the platform (a Kubernetes projected
 * service-account token, a CI job's OIDC token), read again whenever the
 * file changes (the kubelet rotates projected tokens by a symlink swap).
 */
export class OidcTokenFile implements CredentialProvider {
  readonly #path: string;
  #seen = '';
  #token = '';

  constructor(path: string) {
    this.#path = path;
    this.bearer(); // a missing or empty file is an error now, not at the first call
  }

  bearer(): string {
    const stat = statSync(this.#path, { bigint: true });
    const seen = `${stat.ino}:${stat.mtimeNs}:${stat.size}`;
    if (seen !== this.#seen) {
      const token = readFileSync(this.#path, 'utf8').trim();
      if (!token) throw new Error(`${this.#path} holds no token`);
      this.#token = token;
      this.#seen = seen;
    }
    return this.#token;
  }
}

/** What every IAM bearer starts with. */
export const AWS_TOKEN_PREFIX = 'mw-aws-v1.';
const GET_CALLER_IDENTITY = 'Action=GetCallerIdentity&Version=2011-06-15';
/** The service accepts a token for 15 minutes; a new one is signed after 10. */
const AWS_TOKEN_RENEW_AFTER_MS = 10 * 60 * 1000;

export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface AwsIamOptions {
  /** The service's `AUTH_AWS_AUDIENCE`. */
  audience: string;
  /** Default: `AWS_REGION` (set by Lambda), else `us-east-1`. */
  region?: string;
  /** Default: `https://sts.<region>.amazonaws.com/`. */
  stsEndpoint?: string;
  /** Default: the AWS SDK's credential chain (`@aws-sdk/credential-provider-node`). */
  credentials?: () => Promise<AwsCredentials>;
  /** Milliseconds since the epoch (tests). */
  now?: () => number;
}

/**
 * The function's IAM role, proven to middleway without a secret: its own
 * credentials (the AWS SDK v3 chain: Lambda's environment, ECS/EKS roles,
 * profiles) sign (SigV4, `@smithy/signature-v4`) an STS `GetCallerIdentity`
 * request that middleway replays. Needs `@aws-sdk/credential-provider-node`,
 * `@smithy/signature-v4` and `@aws-crypto/sha256-js` (optional peer
 * dependencies of this package; the Lambda Node.js runtimes ship them).
 */
export class AwsIam implements CredentialProvider {
  readonly #audience: string;
  readonly #region: string;
  readonly #endpoint: URL;
  readonly #now: () => number;
  #credentials?: () => Promise<AwsCredentials>;
  #token?: Promise<string>;
  #signedAt = 0;
  #accessKeyId = '';

  constructor(options: AwsIamOptions) {
    if (!options.audience) throw new TypeError("the service's AUTH_AWS_AUDIENCE is required");
    this.#audience = options.audience;
    this.#region = options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
    this.#endpoint = new URL(options.stsEndpoint ?? `https://sts.${this.#region}.amazonaws.com/`);
    this.#credentials = options.credentials;
    this.#now = options.now ?? Date.now;
  }

  async bearer(): Promise<string> {
    const credentials = await (await this.#credentialSource())();
    const young = this.#now() - this.#signedAt < AWS_TOKEN_RENEW_AFTER_MS;
    // A new token when the old one nears its end, or when the runtime's
    // credentials were renewed (the old session may be gone).
    if (!this.#token || !young || credentials.accessKeyId !== this.#accessKeyId) {
      this.#signedAt = this.#now();
      this.#accessKeyId = credentials.accessKeyId;
      this.#token = this.#sign(credentials);
      this.#token.catch(() => {
        this.#token = undefined;
      });
    }
    return this.#token;
  }

  async #credentialSource(): Promise<() => Promise<AwsCredentials>> {
    if (!this.#credentials) {
      const { defaultProvider } = await optional('@aws-sdk/credential-provider-node');
      this.#credentials = defaultProvider() as () => Promise<AwsCredentials>;
    }
    return this.#credentials;
  }

  async #sign(credentials: AwsCredentials): Promise<string> {
    const [{ SignatureV4 }, { Sha256 }] = await Promise.all([
      optional('@smithy/signature-v4'),
      optional('@aws-crypto/sha256-js'),
    ]);
    const signer = new SignatureV4({ credentials, region: this.#region, service: 'sts', sha256: Sha256 });
    const url = this.#endpoint;
    const signed = await signer.sign(
      {
        method: 'POST',
        protocol: url.protocol,
        hostname: url.hostname,
        port: url.port ? Number(url.port) : undefined,
        path: url.pathname,
        headers: {
          host: url.host,
          'content-type': 'application/x-www-form-urlencoded; charset=utf-8',
          'x-middleway-audience': this.#audience,
        },
        body: GET_CALLER_IDENTITY,
      },
      { signingDate: new Date(this.#now()) },
    );
    const request = { method: 'POST', url: url.href, headers: signed.headers, body: GET_CALLER_IDENTITY };
    return AWS_TOKEN_PREFIX + Buffer.from(JSON.stringify(request)).toString('base64url');
  }
}

/**
 * An optional peer dependency, loaded on first use. The name is a variable so
 * that building this package (and type-checking code that uses it) does not
 * need the AWS packages installed.
 */
async function optional(name: string): Promise<any> {
  try {
    return await import(name);
  } catch (error) {
    throw new Error(`AwsIam needs ${name} (npm install ${name})`, { cause: error });
  }
}

/** A string is a static API key; anything else must have `bearer()`. */
export function credentialProvider(key: string | CredentialProvider): CredentialProvider {
  if (typeof key === 'string') return new StaticKey(key);
  if (typeof key?.bearer !== 'function') {
    throw new TypeError('key must be an API key string or a credential provider with bearer()');
  }
  return key;
}
