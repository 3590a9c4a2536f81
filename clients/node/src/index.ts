/**
 * middleway-client: reads and locks from a function, over Node's built-in
 * fetch (undici), which keeps connections alive between invocations of a warm
 * instance when the client lives in module scope.
 */
import {
  DeadlineExceeded,
  errorFor,
  LockLost,
  MiddlewayError,
  NotHeld,
  type NotHeldReason,
  type Problem,
  Unavailable,
} from './errors.js';
import { type CredentialProvider, credentialProvider } from './credentials.js';
import { parseJson } from './json.js';

export * from './credentials.js';
export * from './errors.js';

export interface MiddlewayOptions {
  /** The service, e.g. `http://middleway.middleway.svc`. */
  url: string;
  /** An API key, or a credential provider (`OidcTokenFile`, `AwsIam`). */
  key: string | CredentialProvider;
  /** Longest one HTTP attempt may take, acquire waits aside (default 2000). */
  timeoutMs?: number;
  /** Retries after the first attempt, on 503 and connection errors (default 3). */
  retries?: number;
  /** Longest a whole call may take, retries included (default 10000). */
  deadlineMs?: number;
  /**
   * Time left to the caller: caps every call's deadline and every `waitMs`,
   * so a function never waits past its end. For a client in module scope
   * (one per warm instance, many invocations) pass each call's Lambda
   * `context` instead (`CallOptions.context`).
   */
  remainingTimeMs?: () => number;
  /**
   * PEM bundle of the CA(s) that issued the service's certificate, for an
   * `https://` URL whose certificate does not chain to Node's roots (a
   * private CA, cert-manager's own issuer).
   */
  ca?: string | Buffer;
  /**
   * Told when `withLock`'s final release fails after its body succeeded:
   * the body's result is still returned (the lease ends the grant anyway).
   */
  onReleaseError?: (error: unknown, lock: Lock) => void;
  /** The W3C `traceparent` of the caller's active span, if any (sent as is). */
  traceparent?: () => string | undefined;
  /** Told before each retry (for logs and metrics). */
  onRetry?: (retry: RetryInfo) => void;
}

export interface RetryInfo {
  attempt: number;
  delayMs: number;
  status?: number;
  error?: unknown;
}

/** What a Lambda handler's `context` offers (the Node runtime's `Context`). */
export interface RemainingTime {
  getRemainingTimeInMillis(): number;
}

export interface CallOptions {
  /** This call's own deadline, in ms from now (capped by the client's). */
  deadlineMs?: number;
  /**
   * The invocation's Lambda `context`: the call, its retries and an
   * acquire's wait end 250 ms before the invocation does (`DeadlineExceeded`).
   */
  context?: RemainingTime;
}

export interface AcquireOptions extends CallOptions {
  waitMs?: number;
  leaseMs?: number;
  permits?: number;
}

export interface Lock {
  name: string;
  token: string;
  /** Fences are microsecond-scale numbers, well inside 2^53. */
  fence: number;
  leaseMs: number;
  expiresAt: string;
}

export interface LockState {
  name: string;
  permits: number | null;
  held: number;
  waiting: number;
  fence: number | null;
  holders: { fence: number; expires_at: string }[];
  token_held?: boolean;
  reason?: NotHeldReason;
  expires_at?: string;
}

/**
 * A row as the service returns it. Integers beyond 2^53 (ids of large
 * tables) arrive as `bigint`, exactly; smaller ones as `number`.
 */
export type Transcription = Record<string, unknown> & { transcription_id: number | bigint };

/** Connection errors that prove the request never reached the service. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

/** Margin kept between a wait and the caller's own end. */
const DEADLINE_MARGIN_MS = 250;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function notSent(error: unknown): boolean {
  const cause = (error as { cause?: { code?: string } })?.cause;
  return NOT_SENT.has(cause?.code ?? '');
}

function retryAfterMs(header: string | null): number | undefined {
  if (header === null) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

interface Request {
  method: 'GET' | 'POST';
  path: string;
  body?: unknown;
  /** May it be repeated after it might have reached the service? */
  idempotent: boolean;
  /** Extra time the service may legitimately take (an acquire's wait). */
  serverWaitMs?: number;
  deadlineMs?: number;
  context?: RemainingTime;
}

/** Sends a request: Node's own fetch, or undici's with the given CA. */
type Fetch = (url: string, init: RequestInit) => Promise<Response>;

function fetcher(ca: string | Buffer | undefined): Fetch {
  if (ca === undefined) return (url, init) => fetch(url, init);
  // undici is what Node's fetch is built on; its Agent takes a CA, Node's fetch does not.
  const undici = import('undici').then(({ Agent, fetch: undiciFetch }) => ({
    agent: new Agent({ connect: { ca } }),
    undiciFetch,
  }));
  return async (url, init) => {
    const { agent, undiciFetch } = await undici;
    return (await undiciFetch(url, { ...(init as object), dispatcher: agent })) as unknown as Response;
  };
}

export class Middleway {
  private readonly base: string;
  private readonly credentials: CredentialProvider;
  private readonly options: Required<Pick<MiddlewayOptions, 'timeoutMs' | 'retries' | 'deadlineMs'>> & MiddlewayOptions;
  private readonly send: Fetch;

  constructor(options: MiddlewayOptions) {
    this.base = options.url.replace(/\/+$/, '');
    this.credentials = credentialProvider(options.key);
    this.options = { timeoutMs: 2000, retries: 3, deadlineMs: 10_000, ...options };
    this.send = fetcher(options.ca);
  }

  /** One transcription, or `null` when no row has that id. */
  async transcription(id: number | bigint | string, options: CallOptions = {}): Promise<Transcription | null> {
    const response = await this.call({ method: 'GET', path: `/transcriptions/${id}`, idempotent: true, ...options }, [404]);
    return response.status === 404 ? null : (parseJson(await response.text()) as Transcription);
  }

  /** Up to 100 transcriptions in one query: the rows found (in the order asked) and the ids missing. */
  async transcriptions(
    ids: readonly (number | bigint | string)[],
    options: CallOptions = {},
  ): Promise<{ transcriptions: Transcription[]; missing: (number | bigint)[] }> {
    const response = await this.call({ method: 'GET', path: `/transcriptions?ids=${ids.join(',')}`, idempotent: true, ...options });
    return parseJson(await response.text()) as { transcriptions: Transcription[]; missing: (number | bigint)[] };
  }

  /**
   * Acquires a slot of `name`. Throws `LockTimeout` (423) when none came free
   * within `waitMs` (capped by the deadline). Retried only when the service
   * surely granted nothing (503, or the connection was refused).
   */
  async acquire(name: string, options: AcquireOptions = {}): Promise<Lock> {
    const deadline = this.deadline(options.deadlineMs, options.context);
    const room = Math.max(0, deadline - Date.now() - DEADLINE_MARGIN_MS);
    const waitMs = Math.min(options.waitMs ?? 0, room);
    const body = { op: 'acquire', name, wait_ms: Math.floor(waitMs), lease_ms: options.leaseMs ?? 30_000, permits: options.permits ?? 1 };
    const response = await this.call({
      method: 'POST',
      path: '/locks',
      body,
      idempotent: false,
      serverWaitMs: waitMs,
      deadlineMs: deadline - Date.now(),
    });
    const grant = (await response.json()) as { name: string; token: string; fence: number; lease_ms: number; expires_at: string };
    return { name: grant.name, token: grant.token, fence: grant.fence, leaseMs: grant.lease_ms, expiresAt: grant.expires_at };
  }

  /** Releases a grant. A release whose earlier reply was lost (reason `released`) counts as success. */
  async release(name: string, token: string, options: CallOptions = {}): Promise<void> {
    try {
      await this.call({ method: 'POST', path: '/locks', body: { op: 'release', name, token }, idempotent: true, ...options });
    } catch (error) {
      if (error instanceof NotHeld && error.reason === 'released') return;
      throw error;
    }
  }

  /** Extends a grant's lease to `leaseMs` from now. Throws `NotHeld` once it expired or was released. */
  async extend(name: string, token: string, leaseMs: number, options: CallOptions = {}): Promise<Lock> {
    const body = { op: 'extend', name, token, lease_ms: leaseMs };
    const response = await this.call({ method: 'POST', path: '/locks', body, idempotent: true, ...options });
    const grant = (await response.json()) as { name: string; token: string; fence: number; lease_ms: number; expires_at: string };
    return { name: grant.name, token: grant.token, fence: grant.fence, leaseMs: grant.lease_ms, expiresAt: grant.expires_at };
  }

  /** What the lock looks like now; with `token`, whether that grant holds it (and if not, why). */
  async inspect(name: string, token?: string, options: CallOptions = {}): Promise<LockState> {
    const body = token === undefined ? { op: 'inspect', name } : { op: 'inspect', name, token };
    const response = await this.call({ method: 'POST', path: '/locks', body, idempotent: true, ...options });
    return (await response.json()) as LockState;
  }

  /**
   * Runs `body` holding `name`. The lease is extended every third of its
   * length while the body runs; when an extend says the grant is gone, or
   * extends keep failing until the lease has run out, `signal` aborts (its
   * `reason` is a `LockLost`) and `withLock` rejects with that `LockLost`
   * once the body returns. The grant is released at the end, whatever
   * happens; when that release fails after the body succeeded, the body's
   * result is returned all the same (the lease ends the grant) and
   * `onReleaseError` is told.
   */
  async withLock<T>(
    name: string,
    options: AcquireOptions,
    body: (lock: Lock, signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const leaseMs = options.leaseMs ?? 30_000;
    const started = Date.now();
    const lock = await this.acquire(name, { ...options, leaseMs });
    const keeper = new LeaseKeeper(this, lock, leaseMs, started);
    let outcome: { value: T } | { error: unknown };
    try {
      outcome = { value: await body(lock, keeper.signal) };
    } catch (error) {
      outcome = { error };
    }
    await keeper.stop();
    if (!keeper.lost) {
      try {
        await this.release(name, lock.token, { context: options.context });
      } catch (error) {
        // Not held: the grant ended while the body ran, which the body must hear.
        if (error instanceof NotHeld) keeper.lose(error.reason);
        else if ('error' in outcome) throw outcome.error;
        else this.options.onReleaseError?.(error, lock);
      }
    }
    if (keeper.lost) {
      throw new LockLost(keeper.lost, { cause: 'error' in outcome ? outcome.error : undefined });
    }
    if ('error' in outcome) throw outcome.error;
    return outcome.value;
  }

  private deadline(callDeadlineMs?: number, context?: RemainingTime): number {
    const now = Date.now();
    let deadline = now + (callDeadlineMs ?? this.options.deadlineMs);
    for (const remaining of [this.options.remainingTimeMs?.(), context?.getRemainingTimeInMillis()]) {
      if (remaining !== undefined) deadline = Math.min(deadline, now + remaining - DEADLINE_MARGIN_MS);
    }
    return deadline;
  }

  /** Sends `request`, retrying where safe; resolves with a 2xx (or an `allowed` status) response. */
  private async call(request: Request, allowed: number[] = []): Promise<Response> {
    const deadline = this.deadline(request.deadlineMs, request.context);
    const headers: Record<string, string> = {
      authorization: `Bearer ${await this.credentials.bearer()}`,
      accept: 'application/json',
    };
    if (request.body !== undefined) headers['content-type'] = 'application/json';
    const traceparent = this.options.traceparent?.();
    if (traceparent) headers.traceparent = traceparent;
    const payload = request.body === undefined ? undefined : JSON.stringify(request.body);
    for (let attempt = 0; ; attempt++) {
      const left = deadline - Date.now();
      if (left <= 0) throw new DeadlineExceeded('the call deadline passed before an answer');
      const timeout = Math.min(left, this.options.timeoutMs + (request.serverWaitMs ?? 0));
      const deadlineBound = timeout === left;
      let retry: { delayMs: number; status?: number; error?: unknown; last: MiddlewayError };
      try {
        const response = await this.send(this.base + request.path, {
          method: request.method,
          headers,
          body: payload,
          signal: AbortSignal.timeout(timeout),
        });
        if (response.ok || allowed.includes(response.status)) return response;
        const problem = (await response.json().catch(() => ({}))) as Problem;
        const error = errorFor(response.status, problem);
        if (response.status !== 503) throw error;
        const backoff = this.backoffMs(attempt);
        retry = { delayMs: Math.max(retryAfterMs(response.headers.get('retry-after')) ?? 0, backoff), status: 503, last: error };
      } catch (error) {
        if (error instanceof MiddlewayError) throw error;
        const sent = !notSent(error);
        const timedOut = (error as Error)?.name === 'TimeoutError';
        if (timedOut && deadlineBound) {
          throw new DeadlineExceeded('the call deadline passed before an answer', {
            cause: error,
            outcomeUnknown: !request.idempotent,
          });
        }
        const why = timedOut ? 'timed out' : 'connection failed';
        if (sent && !request.idempotent) {
          throw new Unavailable(`the request ${why} after it may have reached the service; not retried`, {
            cause: error,
            outcomeUnknown: true,
          });
        }
        retry = { delayMs: this.backoffMs(attempt), error, last: new Unavailable(`the request ${why}`, { cause: error }) };
      }
      if (attempt >= this.options.retries) throw retry.last;
      if (Date.now() + retry.delayMs >= deadline) {
        throw new DeadlineExceeded('the call deadline left no time for another attempt', {
          cause: retry.last,
        });
      }
      this.options.onRetry?.({ attempt: attempt + 1, delayMs: retry.delayMs, status: retry.status, error: retry.error });
      await sleep(retry.delayMs);
    }
  }

  /** Full jitter: a random wait in [0, 100 ms × 2^attempt], at most 2 s. */
  private backoffMs(attempt: number): number {
    return Math.random() * Math.min(2000, 100 * 2 ** attempt);
  }
}

/** Extends a grant every third of its lease until stopped or the grant is lost. */
class LeaseKeeper {
  private readonly controller = new AbortController();
  private timer?: ReturnType<typeof setTimeout>;
  private running?: Promise<void>;
  private stopped = false;
  /** Until when the grant surely holds, on this machine's clock. */
  private heldUntil: number;
  lost?: NotHeldReason;

  constructor(
    private readonly client: Middleway,
    private readonly lock: Lock,
    private readonly leaseMs: number,
    askedAt: number,
  ) {
    this.heldUntil = askedAt + leaseMs;
    this.schedule();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  lose(reason: NotHeldReason): void {
    if (this.lost) return;
    this.lost = reason;
    this.controller.abort(new LockLost(reason));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private schedule(): void {
    if (this.stopped || this.lost) return;
    this.timer = setTimeout(() => {
      this.running = this.extendOnce();
    }, Math.max(10, Math.floor(this.leaseMs / 3)));
  }

  private async extendOnce(): Promise<void> {
    const askedAt = Date.now();
    try {
      // Even past the lease on this clock (a frozen process), ask: the
      // service's answer (409 with a reason) is the one that counts.
      const deadlineMs = Math.max(this.heldUntil - askedAt, 1000);
      await this.client.extend(this.lock.name, this.lock.token, this.leaseMs, { deadlineMs });
      this.heldUntil = askedAt + this.leaseMs;
    } catch (error) {
      if (error instanceof NotHeld) return this.lose(error.reason);
      // Transient (503, connection): keep trying while the lease may still hold.
      if (Date.now() >= this.heldUntil) return this.lose('expired');
    }
    this.schedule();
  }
}
