"""What both clients decide alike: deadlines, which failures to retry, how long to wait.
The sync and async clients only differ in how they send and sleep."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import httpx

from .errors import MiddlewayError, Unavailable, error_for

#: Margin kept between a wait and the caller's own end, in seconds.
DEADLINE_MARGIN_S = 0.25

#: Failures that prove the request never left this process.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class Settings:
    url: str
    key: str
    #: Longest one HTTP attempt may take, acquire waits aside.
    timeout_s: float = 2.0
    #: Retries after the first attempt, on 503 and connection errors.
    retries: int = 3
    #: Longest a whole call may take, retries included.
    deadline_s: float = 10.0
    #: Milliseconds the caller has left (e.g. ``context.get_remaining_time_in_millis``).
    remaining_time_ms: Optional[Callable[[], float]] = None
    #: The W3C ``traceparent`` of the caller's active span, if any.
    traceparent: Optional[Callable[[], Optional[str]]] = None
    #: Told before each retry: ``on_retry(attempt, delay_s, status_or_exception)``.
    on_retry: Optional[Callable[[int, float, Union[int, BaseException]], None]] = None
    headers: Dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.headers = {"authorization": f"Bearer {self.key}", "accept": "application/json"}

    def deadline(self, call_deadline_s: Optional[float] = None) -> float:
        """The monotonic instant a call must be done by."""
        now = time.monotonic()
        deadline = now + (self.deadline_s if call_deadline_s is None else call_deadline_s)
        if self.remaining_time_ms is not None:
            deadline = min(deadline, now + self.remaining_time_ms() / 1000 - DEADLINE_MARGIN_S)
        return deadline

    def request_headers(self) -> Dict[str, str]:
        headers = dict(self.headers)
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
        raise Unavailable("the call deadline passed before an answer")
    return min(left, settings.timeout_s + call.server_wait_s)


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
    why = "timed out" if isinstance(failure, httpx.TimeoutException) else "failed"
    if not isinstance(failure, NOT_SENT) and not call.idempotent:
        raise Unavailable(
            f"the request {why} after it may have reached the service; not retried",
            outcome_unknown=True,
        ) from failure
    return Retry(backoff_s(attempt), failure, Unavailable(f"the request {why}: {failure!r}"))


def give_up(settings: Settings, call: Call, attempt: int, retry: Retry) -> bool:
    """Whether to stop retrying (and raise ``retry.last``); tells ``on_retry`` otherwise."""
    if attempt >= settings.retries or time.monotonic() + retry.delay_s >= call.deadline:
        return True
    if settings.on_retry:
        settings.on_retry(attempt + 1, retry.delay_s, retry.cause)
    return False


def acquire_body(name: str, wait_ms: int, lease_ms: int, permits: int, deadline: float) -> Dict[str, Any]:
    room_ms = max(0, int((deadline - time.monotonic() - DEADLINE_MARGIN_S) * 1000))
    return {"op": "acquire", "name": name, "wait_ms": min(wait_ms, room_ms), "lease_ms": lease_ms, "permits": permits}
