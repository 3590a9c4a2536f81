"""The errors this library raises; each carries the service's problem+json."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


class MiddlewayError(Exception):
    """Every error this library raises. ``status`` is the HTTP status, when there was one."""

    def __init__(self, message: str, status: Optional[int] = None, problem: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.status = status
        self.problem = problem or {}
        self.request_id = self.problem.get("request_id")


class LockTimeout(MiddlewayError):
    """423: no slot came free within ``wait_ms``. Never retried."""


class NotHeld(MiddlewayError):
    """409 ``not-held``: the token does not hold the lock now; ``reason`` says why
    (``released``, ``expired`` or ``unknown``)."""

    def __init__(self, reason: str, status: Optional[int] = None, problem: Optional[Dict[str, Any]] = None):
        super().__init__(f"the token does not hold the lock ({reason})", status, problem)
        self.reason = reason


class PermitsMismatch(MiddlewayError):
    """409 ``permits-mismatch``: the lock exists with another number of permits."""


class Unavailable(MiddlewayError):
    """The service could not answer: 503 after the retries, connection errors, or
    the deadline passed. ``outcome_unknown`` is true when an acquire may have
    reached the service before the connection failed: it is not retried, since
    a retry could be granted a second slot (the service hands a slot granted to
    a caller that has gone back to the queue, and the lease bounds it anyway)."""

    def __init__(self, message: str, status: Optional[int] = None, problem: Optional[Dict[str, Any]] = None,
                 outcome_unknown: bool = False):
        super().__init__(message, status, problem)
        self.outcome_unknown = outcome_unknown


class DeadlineExceeded(MiddlewayError):
    """The call's deadline passed before an answer: its own ``deadline_s``, the
    client's, or the Lambda invocation's end (``context``). Not retried: no
    time is left. ``outcome_unknown`` as for ``Unavailable``."""

    def __init__(self, message: str, outcome_unknown: bool = False):
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class Unauthorized(MiddlewayError):
    """401: the key is missing, malformed, wrong or revoked."""


class InvalidRequest(MiddlewayError):
    """400: ``fields`` lists what was wrong (``[{"field": ..., "message": ...}]``)."""

    @property
    def fields(self) -> List[Dict[str, str]]:
        return list(self.problem.get("errors") or [])


class LockLost(MiddlewayError):
    """The body of ``lock()`` lost its lock: ``reason`` is ``expired`` or ``released``."""

    def __init__(self, reason: str):
        super().__init__(f"the lock was lost while the body ran ({reason})")
        self.reason = reason


def error_for(status: int, problem: Dict[str, Any]) -> MiddlewayError:
    """The error a non-2xx answer stands for."""
    detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    if status == 400:
        return InvalidRequest(detail, status, problem)
    if status == 401:
        return Unauthorized(detail, status, problem)
    if status == 409:
        if str(problem.get("type", "")).endswith(":permits-mismatch"):
            return PermitsMismatch(detail, status, problem)
        return NotHeld(problem.get("reason") or "unknown", status, problem)
    if status == 423:
        return LockTimeout(detail, status, problem)
    if status == 503:
        return Unavailable(detail, status, problem)
    return MiddlewayError(detail, status, problem)
