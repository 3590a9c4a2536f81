"""The synchronous client: ``Middleway(url, key)`` in module scope, one
keep-alive connection pool reused across invocations of a warm instance."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import httpx

from . import _policy as policy
from ._model import Batch, Lock
from .errors import LockLost, MiddlewayError, NotHeld

Id = Union[int, str]


class Middleway:
    def __init__(self, url: str, key: str, **settings: Any) -> None:
        self.settings = policy.Settings(url, key, **settings)
        self._http = httpx.Client(base_url=self.settings.url, limits=httpx.Limits(max_keepalive_connections=4),
                                  verify=self.settings.verify())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Middleway":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transcription(self, id: Id, deadline_s: Optional[float] = None,
                      context: Any = None) -> Optional[Dict[str, Any]]:
        """One transcription, or None when no row has that id."""
        response = self._call(policy.Call("GET", f"/transcriptions/{id}", allowed=(404,)), deadline_s, context=context)
        return None if response.status_code == 404 else response.json()

    def transcriptions(self, ids: Sequence[Id], deadline_s: Optional[float] = None,
                       context: Any = None) -> Batch:
        """Up to 100 transcriptions in one query."""
        path = "/transcriptions?ids=" + ",".join(str(i) for i in ids)
        return Batch.from_json(self._call(policy.Call("GET", path), deadline_s, context=context).json())

    def acquire(self, name: str, wait_ms: int = 0, lease_ms: int = 30_000, permits: int = 1,
                deadline_s: Optional[float] = None, context: Any = None) -> Lock:
        """A slot of ``name``; LockTimeout (423) when none came free within ``wait_ms``
        (capped by the deadline). Retried only when the service surely granted nothing."""
        deadline = self.settings.deadline(deadline_s, context)
        body = policy.acquire_body(name, wait_ms, lease_ms, permits, deadline)
        call = policy.Call("POST", "/locks", body, idempotent=False, server_wait_s=body["wait_ms"] / 1000)
        return Lock.from_grant(self._call(call, deadline=deadline).json())

    def release(self, name: str, token: str, deadline_s: Optional[float] = None, context: Any = None) -> None:
        """Releases a grant; a release whose earlier reply was lost (``released``) succeeds."""
        try:
            self._call(policy.Call("POST", "/locks", {"op": "release", "name": name, "token": token}), deadline_s,
                       context=context)
        except NotHeld as error:
            if error.reason != "released":
                raise

    def extend(self, name: str, token: str, lease_ms: int, deadline_s: Optional[float] = None,
               context: Any = None) -> Lock:
        """A new lease of ``lease_ms`` from now; NotHeld once expired or released."""
        body = {"op": "extend", "name": name, "token": token, "lease_ms": lease_ms}
        return Lock.from_grant(self._call(policy.Call("POST", "/locks", body), deadline_s, context=context).json())

    def inspect(self, name: str, token: Optional[str] = None, deadline_s: Optional[float] = None,
                context: Any = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"op": "inspect", "name": name}
        if token is not None:
            body["token"] = token
        return self._call(policy.Call("POST", "/locks", body), deadline_s, context=context).json()

    @contextlib.contextmanager
    def lock(self, name: str, wait_ms: int = 0, lease_ms: int = 30_000, permits: int = 1,
             context: Any = None) -> Iterator[Lock]:
        """Holds ``name`` for the block, extending the lease every third of its length.
        When the grant is lost, ``lock.lost`` is set at once and LockLost is raised
        as the block exits. The grant is released on exit, whatever happens."""
        asked = time.monotonic()
        grant = self.acquire(name, wait_ms, lease_ms, permits, context=context)
        grant.lost = threading.Event()
        keeper = _LeaseKeeper(self, grant, lease_ms / 1000, asked)
        body_error: Optional[BaseException] = None
        try:
            yield grant
        except BaseException as error:  # re-raised below, or chained to LockLost
            body_error = error
        keeper.stop()
        if not grant.lost.is_set():
            try:
                self.release(name, grant.token, context=context)
            except NotHeld as error:
                # The grant ended while the body ran: the body must hear it.
                grant.mark_lost(error.reason)
            except MiddlewayError as error:
                if body_error is not None:
                    raise body_error from error
                # The body succeeded: its work stands, and the lease ends the grant.
                if self.settings.on_release_error:
                    self.settings.on_release_error(error, grant)
        if grant.lost.is_set():
            raise LockLost(grant.lost_reason or "expired") from body_error
        if body_error is not None:
            raise body_error

    def _call(self, call: policy.Call, deadline_s: Optional[float] = None,
              deadline: Optional[float] = None, context: Any = None) -> httpx.Response:
        call.deadline = deadline if deadline is not None else self.settings.deadline(deadline_s, context)
        headers = self.settings.request_headers()
        attempt = 0
        while True:
            timeout = policy.attempt_timeout(self.settings, call)
            try:
                response = self._http.request(call.method, call.path, json=call.body, headers=headers, timeout=timeout)
                retry = policy.judge_response(response, call, attempt)
                if retry is None:
                    return response
            except httpx.HTTPError as failure:
                retry = policy.judge_failure(failure, call, attempt)
            stop = policy.give_up(self.settings, call, attempt, retry)
            if stop is not None:
                raise stop
            time.sleep(retry.delay_s)
            attempt += 1


class _LeaseKeeper:
    """Extends a grant every third of its lease, on a thread, until stopped or lost."""

    def __init__(self, client: Middleway, grant: Lock, lease_s: float, asked: float) -> None:
        self._client, self._grant, self._lease_s = client, grant, lease_s
        self._held_until = asked + lease_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"middleway-lease-{grant.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._lease_s / 3):
            asked = time.monotonic()
            try:
                # Even past the lease on this clock (a frozen process), ask:
                # the service's answer (409 with a reason) is the one that counts.
                deadline_s = max(self._held_until - asked, 1.0)
                self._client.extend(self._grant.name, self._grant.token, int(self._lease_s * 1000), deadline_s)
                self._held_until = asked + self._lease_s
            except NotHeld as error:
                return self._grant.mark_lost(error.reason)
            except Exception:  # transient: keep trying while the lease may hold
                if time.monotonic() >= self._held_until:
                    return self._grant.mark_lost("expired")
