/** A problem+json answer, as the service sends it (docs/API.md). */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  request_id?: string;
  reason?: string;
  errors?: { field: string; message: string }[];
}

/** Every error this library throws. `status` is the HTTP status, when there was one. */
export class MiddlewayError extends Error {
  readonly status?: number;
  readonly requestId?: string;
  readonly problem?: Problem;

  constructor(message: string, options: { status?: number; problem?: Problem; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
    this.problem = options.problem;
    this.requestId = options.problem?.request_id;
  }
}

/** 423: no slot came free within `waitMs`. Never retried by the library. */
export class LockTimeout extends MiddlewayError {}

/** Why a token does not hold its lock (409 `not-held`). */
export type NotHeldReason = 'released' | 'expired' | 'unknown';

/** 409 `not-held`: the token does not hold the lock now; `reason` says why. */
export class NotHeld extends MiddlewayError {
  readonly reason: NotHeldReason;

  constructor(reason: NotHeldReason, options: { status?: number; problem?: Problem } = {}) {
    super(`the token does not hold the lock (${reason})`, options);
    this.reason = reason;
  }
}

/** 409 `permits-mismatch`: the lock exists with another number of permits. */
export class PermitsMismatch extends MiddlewayError {}

/**
 * The service could not answer: 503 after the retries, connection errors, or
 * the deadline passed. `outcomeUnknown` is true when a non-idempotent request
 * (an acquire) may have reached the service before the connection failed: it
 * is not retried, because a retry could be granted a second slot. The service
 * gives a slot granted to a caller that has gone back to the queue, and a
 * lease bounds it in any case.
 */
export class Unavailable extends MiddlewayError {
  readonly outcomeUnknown: boolean;

  constructor(message: string, options: { status?: number; problem?: Problem; cause?: unknown; outcomeUnknown?: boolean } = {}) {
    super(message, options);
    this.outcomeUnknown = options.outcomeUnknown ?? false;
  }
}

/**
 * The call's deadline passed before an answer: its own `deadlineMs`, the
 * client's, or the Lambda invocation's end (`context`). Not retried: there
 * is no time left. `outcomeUnknown` as for `Unavailable` (an acquire that
 * may have been granted is released by the service when it sees the caller
 * has gone; the lease bounds it otherwise).
 */
export class DeadlineExceeded extends MiddlewayError {
  readonly outcomeUnknown: boolean;

  constructor(message: string, options: { cause?: unknown; outcomeUnknown?: boolean } = {}) {
    super(message, options);
    this.outcomeUnknown = options.outcomeUnknown ?? false;
  }
}

/** 401: the key is missing, malformed, wrong or revoked. */
export class Unauthorized extends MiddlewayError {}

/** 400: the request was refused; `fields` names what was wrong. */
export class InvalidRequest extends MiddlewayError {
  readonly fields: { field: string; message: string }[];

  constructor(message: string, options: { status?: number; problem?: Problem } = {}) {
    super(message, options);
    this.fields = options.problem?.errors ?? [];
  }
}

/** `withLock`'s body lost its lock: the lease expired or the grant was released elsewhere. */
export class LockLost extends MiddlewayError {
  readonly reason: NotHeldReason;

  constructor(reason: NotHeldReason, options: { cause?: unknown } = {}) {
    super(`the lock was lost while the body ran (${reason})`, options);
    this.reason = reason;
  }
}

/** The error a non-2xx answer stands for. */
export function errorFor(status: number, problem: Problem): MiddlewayError {
  const options = { status, problem };
  const detail = problem.detail ?? problem.title ?? `HTTP ${status}`;
  switch (status) {
    case 400:
      return new InvalidRequest(detail, options);
    case 401:
      return new Unauthorized(detail, options);
    case 409:
      if (problem.type?.endsWith(':permits-mismatch')) return new PermitsMismatch(detail, options);
      return new NotHeld((problem.reason as NotHeldReason) ?? 'unknown', options);
    case 423:
      return new LockTimeout(detail, options);
    case 503:
      return new Unavailable(detail, options);
    default:
      return new MiddlewayError(detail, options);
  }
}
