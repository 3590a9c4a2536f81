"""What both clients decide alike: deadlines, which failures to retry, how long to wait.
The sync and async clients only differ in how they send and sleep."""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import httpx

from .credentials import CredentialProvider, provider
from .errors import DeadlineExceeded, MiddlewayError, Unavailable, error_for

#: Margin kept between a wait and the caller's own end, in seconds.
DEADLINE_MARGIN_S = 0.25

#: Failures that prove the request never left this process.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class Settings:
    url: str
    #: An API key, or a credential provider (``OidcTokenFile``, ``AwsIam``).
    key: Union[str, CredentialProvider] = field(repr=False)
    #: Longest one HTTP attempt may take, acquire waits aside.
    timeout_s: float = 2.0
    #: Retries after the first attempt, on 503 and connection errors.
    retries: int = 3
    #: Longest a whole call may take, retries included.
    deadline_s: float = 10.0
    #: Milliseconds the caller has left. For a client in module scope (one per
    #: warm instance, many invocations) pass each call's Lambda ``context``.
    remaining_time_ms: Optional[Callable[[], float]] = None
    #: PEM bundle of the CA(s) of an ``https://`` service's certificate (a private CA).
    ca_file: Optional[str] = None
    #: Told ``(error, lock)`` when ``lock()``'s final release fails after its
    #: body succeeded; the block still completes (the lease ends the grant).
    on_release_error: Optional[Callable[[BaseException, Any], None]] = None
    #: The W3C ``traceparent`` of the caller's active span, if any.
    traceparent: Optional[Callable[[], Optional[str]]] = None
    #: Told before each retry: ``on_retry(attempt, delay_s, status_or_exception)``.
    on_retry: Optional[Callable[[int, float, Union[int, BaseException]], None]] = None
    headers: Dict[str, str] = field(init=False)
    credentials: CredentialProvider = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.credentials = provider(self.key)
        self.headers = {"accept": "application/json"}

    def deadline(self, call_deadline_s: Optional[float] = None, context: Any = None) -> float:
        """The monotonic instant a call must be done by: its own deadline, the
        client's, and 250 ms before the invocation ends (``context`` is Lambda's)."""
        now = time.monotonic()
        deadline = now + (self.deadline_s if call_deadline_s is None else call_deadline_s)
        left = [self.remaining_time_ms() if self.remaining_time_ms is not None else None,
                context.get_remaining_time_in_millis() if context is not None else None]
        for remaining_ms in left:
            if remaining_ms is not None:
                deadline = min(deadline, now + remaining_ms / 1000 - DEADLINE_MARGIN_S)
        return deadline

    def verify(self) -> Any:
        """httpx's ``verify``: the CA bundle's context, or the default roots."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def request_headers(self) -> Dict[str, str]:
        headers = dict(self.headers)
        headers["authorization"] = f"Bearer {self.credentials.bearer()}"
        traceparent = self.traceparent() if self.traceparent else None
        if traceparent:
            headers["traceparent"] = traceparent
        return headers


@dataclass
class Call:
    method: str
    path: str
    body: Optional[Dict[str, Any]] = None
    #: May it be repeated after it may have reached the service?
    idempotent: bool = True
    #: Extra seconds the service may legitimately take (an acquire's wait).
    server_wait_s: float = 0.0
    deadline: float = 0.0
    allowed: tuple = ()
    #: The last attempt's timeout was the time left to the deadline.
    deadline_bound: bool = False


def backoff_s(attempt: int) -> float:
    """Full jitter: a random wait in [0, 0.1 s × 2^attempt], at most 2 s."""
    return random.uniform(0, min(2.0, 0.1 * 2 ** attempt))


def retry_after_s(header: Optional[str]) -> float:
    if header is None:
        return 0.0
    try:
        return max(0.0, float(header))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(header) if header else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else 0.0


def attempt_timeout(settings: Settings, call: Call) -> float:
    """Seconds this attempt may take, or raise when the deadline has passed."""
    left = call.deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the call deadline passed before an answer")
    attempt = settings.timeout_s + call.server_wait_s
    call.deadline_bound = left <= attempt
    return min(left, attempt)


@dataclass
class Retry:
    delay_s: float
    cause: Union[int, BaseException]
    last: MiddlewayError


def judge_response(response: httpx.Response, call: Call, attempt: int) -> Optional[Retry]:
    """None when ``response`` is the answer; a Retry for a 503; raises any other error."""
    if response.is_success or response.status_code in call.allowed:
        return None
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    error = error_for(response.status_code, problem if isinstance(problem, dict) else {})
    if response.status_code != 503:
        raise error
    delay = max(retry_after_s(response.headers.get("retry-after")), backoff_s(attempt))
    return Retry(delay, 503, error)


def judge_failure(failure: httpx.HTTPError, call: Call, attempt: int) -> Retry:
    """A Retry for a failure that is safe to repeat; raises for an unknown outcome."""
    timed_out = isinstance(failure, httpx.TimeoutException)
    if timed_out and call.deadline_bound:
        raise DeadlineExceeded(
            "the call deadline passed before an answer",
            outcome_unknown=not call.idempotent and not isinstance(failure, NOT_SENT),
        ) from failure
    why = "timed out" if timed_out else "failed"
    if not isinstance(failure, NOT_SENT) and not call.idempotent:
        raise Unavailable(
            f"the request {why} after it may have reached the service; not retried",
            outcome_unknown=True,
        ) from failure
    return Retry(backoff_s(attempt), failure, Unavailable(f"the request {why}: {failure!r}"))


def give_up(settings: Settings, call: Call, attempt: int, retry: Retry) -> Optional[MiddlewayError]:
    """The error to raise when retrying stops: the last one once the retries
    are spent, DeadlineExceeded when no time is left; else tells ``on_retry``."""
    if attempt >= settings.retries:
        return retry.last
    if time.monotonic() + retry.delay_s >= call.deadline:
        error = DeadlineExceeded("the call deadline left no time for another attempt")
        error.__cause__ = retry.last
        return error
    if settings.on_retry:
        settings.on_retry(attempt + 1, retry.delay_s, retry.cause)
    return None


def acquire_body(name: str, wait_ms: int, lease_ms: int, permits: int, deadline: float) -> Dict[str, Any]:
    room_ms = max(0, int((deadline - time.monotonic() - DEADLINE_MARGIN_S) * 1000))
    return {"op": "acquire", "name": name, "wait_ms": min(wait_ms, room_ms), "lease_ms": lease_ms, "permits": permits}
