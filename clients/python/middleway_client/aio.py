"""The asyncio client: ``async with AsyncMiddleway(url, key) as mw: ...``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Dict, Optional, Sequence, Union

import httpx

from . import _policy as policy
from ._model import Batch, Lock
from .errors import LockLost, MiddlewayError, NotHeld

Id = Union[int, str]


class AsyncMiddleway:
    def __init__(self, url: str, key: str, **settings: Any) -> None:
        self.settings = policy.Settings(url, key, **settings)
        self._http = httpx.AsyncClient(base_url=self.settings.url, limits=httpx.Limits(max_keepalive_connections=4),
                                  verify=self.settings.verify())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncMiddleway":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def transcription(self, id: Id, deadline_s: Optional[float] = None,
                       context: Any = None) -> Optional[Dict[str, Any]]:
        response = await self._call(policy.Call("GET", f"/transcriptions/{id}", allowed=(404,)), deadline_s, context=context)
        return None if response.status_code == 404 else response.json()

    async def transcriptions(self, ids: Sequence[Id], deadline_s: Optional[float] = None,
                        context: Any = None) -> Batch:
        path = "/transcriptions?ids=" + ",".join(str(i) for i in ids)
        return Batch.from_json((await self._call(policy.Call("GET", path), deadline_s, context=context)).json())

    async def acquire(self, name: str, wait_ms: int = 0, lease_ms: int = 30_000, permits: int = 1,
                      deadline_s: Optional[float] = None, context: Any = None) -> Lock:
        deadline = self.settings.deadline(deadline_s, context)
        body = policy.acquire_body(name, wait_ms, lease_ms, permits, deadline)
        call = policy.Call("POST", "/locks", body, idempotent=False, server_wait_s=body["wait_ms"] / 1000)
        return Lock.from_grant((await self._call(call, deadline=deadline)).json())

    async def release(self, name: str, token: str, deadline_s: Optional[float] = None, context: Any = None) -> None:
        try:
            await self._call(policy.Call("POST", "/locks", {"op": "release", "name": name, "token": token}), deadline_s,
                       context=context)
        except NotHeld as error:
            if error.reason != "released":
                raise

    async def extend(self, name: str, token: str, lease_ms: int, deadline_s: Optional[float] = None,
               context: Any = None) -> Lock:
        body = {"op": "extend", "name": name, "token": token, "lease_ms": lease_ms}
        return Lock.from_grant((await self._call(policy.Call("POST", "/locks", body), deadline_s, context=context)).json())

    async def inspect(self, name: str, token: Optional[str] = None,
                      deadline_s: Optional[float] = None, context: Any = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"op": "inspect", "name": name}
        if token is not None:
            body["token"] = token
        return (await self._call(policy.Call("POST", "/locks", body), deadline_s, context=context)).json()

    @contextlib.asynccontextmanager
    async def lock(self, name: str, wait_ms: int = 0, lease_ms: int = 30_000,
                   permits: int = 1, context: Any = None) -> AsyncIterator[Lock]:
        """As ``Middleway.lock``; ``lock.lost`` is an ``asyncio.Event``."""
        asked = time.monotonic()
        grant = await self.acquire(name, wait_ms, lease_ms, permits, context=context)
        grant.lost = asyncio.Event()
        keeper = asyncio.ensure_future(self._keep(grant, lease_ms / 1000, asked))
        body_error: Optional[BaseException] = None
        try:
            yield grant
        except BaseException as error:  # re-raised below, or chained to LockLost
            body_error = error
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if not grant.lost.is_set():
            try:
                await self.release(name, grant.token, context=context)
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

    async def _keep(self, grant: Lock, lease_s: float, asked: float) -> None:
        held_until = asked + lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            asked = time.monotonic()
            try:
                await self.extend(grant.name, grant.token, int(lease_s * 1000), max(held_until - asked, 1.0))
                held_until = asked + lease_s
            except NotHeld as error:
                return grant.mark_lost(error.reason)
            except Exception:  # transient: keep trying while the lease may hold
                if time.monotonic() >= held_until:
                    return grant.mark_lost("expired")

    async def _call(self, call: policy.Call, deadline_s: Optional[float] = None,
                    deadline: Optional[float] = None, context: Any = None) -> httpx.Response:
        call.deadline = deadline if deadline is not None else self.settings.deadline(deadline_s, context)
        headers = self.settings.request_headers()
        attempt = 0
        while True:
            timeout = policy.attempt_timeout(self.settings, call)
            try:
                response = await self._http.request(call.method, call.path, json=call.body, headers=headers,
                                                    timeout=timeout)
                retry = policy.judge_response(response, call, attempt)
                if retry is None:
                    return response
            except httpx.HTTPError as failure:
                retry = policy.judge_failure(failure, call, attempt)
            stop = policy.give_up(self.settings, call, attempt, retry)
            if stop is not None:
                raise stop
            await asyncio.sleep(retry.delay_s)
            attempt += 1

