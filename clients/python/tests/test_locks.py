import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import KEY, fenced_write, stored_value, unique
from middleway_client import AsyncMiddleway, DeadlineExceeded, LockLost, LockTimeout, Middleway, NotHeld, Unavailable


def test_acquire_hand_on_release_and_a_repeated_release_succeeds(service):
    with Middleway(service.url, KEY) as mw, Middleway(service.url, KEY) as job:
        name = unique("handoff")
        lock = mw.acquire(name, wait_ms=0, lease_ms=600_000)
        assert lock.fence > 0 and lock.token
        job.release(name, lock.token)
        job.release(name, lock.token)  # reason `released`: success
        state = mw.inspect(name, lock.token)
        assert state["token_held"] is False and state["reason"] == "released"


def test_423_is_lock_timeout_and_never_retried(service):
    retries = []
    with Middleway(service.url, KEY, on_retry=lambda *r: retries.append(r)) as mw:
        name = unique("busy")
        mw.acquire(name, lease_ms=5000)
        with pytest.raises(LockTimeout) as busy:
            mw.acquire(name, wait_ms=0)
        assert busy.value.status == 423
    assert retries == []


def test_a_wait_is_capped_by_the_time_the_function_has_left(service):
    name = unique("deadline")
    with Middleway(service.url, KEY) as mw, Middleway(service.url, KEY, remaining_time_ms=lambda: 1200) as fn:
        mw.acquire(name, lease_ms=10_000)
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            fn.acquire(name, wait_ms=8000)
        assert time.monotonic() - started < 2.0


def test_an_expired_token_is_not_held_with_reason_expired(service):
    with Middleway(service.url, KEY) as mw:
        name = unique("expire")
        lock = mw.acquire(name, lease_ms=150)
        time.sleep(0.4)
        with pytest.raises(NotHeld) as gone:
            mw.extend(name, lock.token, 1000)
        assert gone.value.reason == "expired"


def test_lock_keeps_a_300ms_lease_through_a_2s_body_then_releases(service):
    name = unique("keep")
    with Middleway(service.url, KEY) as mw, Middleway(service.url, KEY) as other:
        with mw.lock(name, wait_ms=0, lease_ms=300) as lock:
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                with pytest.raises(LockTimeout):
                    other.acquire(name, wait_ms=0)
                state = other.inspect(name)
                assert state["held"] == 1 and [h["fence"] for h in state["holders"]] == [lock.fence]
                time.sleep(0.1)
            assert not lock.lost.is_set()
        assert other.inspect(name)["held"] == 0


def test_lock_sets_lost_and_raises_when_released_elsewhere(service):
    name = unique("stolen")
    with Middleway(service.url, KEY) as mw, Middleway(service.url, KEY) as other:
        with pytest.raises(LockLost) as lost:
            with mw.lock(name, wait_ms=0, lease_ms=300) as lock:
                other.release(name, lock.token)
                assert lock.lost.wait(3.0), "the loss is seen while the body runs"
                assert lock.lost_reason == "released"
        assert lost.value.reason == "released"


def test_a_worker_frozen_past_its_lease_learns_it_lost_and_its_late_write_is_refused(service):
    name, store_key = unique("frozen"), unique("store")
    worker = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "frozen_worker.py"),
                               service.url, KEY, name, store_key], stdout=subprocess.PIPE, text=True)
    said = [json.loads(worker.stdout.readline())]
    worker.send_signal(signal.SIGSTOP)
    with Middleway(service.url, KEY) as mw:
        mine = mw.acquire(name, wait_ms=3000, lease_ms=5000)
        assert mine.fence > said[0]["acquired"]
        assert fenced_write(store_key, mine.fence, "new")
        worker.send_signal(signal.SIGCONT)
        said += [json.loads(line) for line in worker.stdout]
        worker.wait()
        assert said[1] == {"write": "refused"}
        assert said[2] == {"outcome": "LockLost", "reason": "expired"}
        assert stored_value(store_key) == "new"
        mw.release(name, mine.token)


def test_an_acquire_that_may_have_reached_a_hung_service_is_not_retried(start_service):
    hung = start_service()
    hung.signal(signal.SIGSTOP)
    retries = []
    with Middleway(hung.url, KEY, on_retry=lambda *r: retries.append(r)) as mw:
        # Its one attempt ran into the deadline: the grant's fate is unknown.
        with pytest.raises(DeadlineExceeded) as unknown:
            mw.acquire(unique("hung"), deadline_s=1.0)
        assert unknown.value.outcome_unknown and retries == []
        # With more time than one attempt takes, still not retried.
        with pytest.raises(Unavailable) as unknown:
            mw.acquire(unique("hung"), deadline_s=3.0)
        assert unknown.value.outcome_unknown and retries == []
        # A read is retried until the deadline.
        with pytest.raises(DeadlineExceeded) as read:
            mw.transcription(1, deadline_s=3.0)
        assert not read.value.outcome_unknown and retries


async def test_the_async_lock_keeps_its_lease_and_reports_a_loss(service):
    name = unique("async")
    async with AsyncMiddleway(service.url, KEY) as mw, AsyncMiddleway(service.url, KEY) as other:
        async with mw.lock(name, wait_ms=0, lease_ms=300) as lock:
            await asyncio.sleep(1.0)
            with pytest.raises(LockTimeout):
                await other.acquire(name, wait_ms=0)
            assert not lock.lost.is_set()
        assert (await other.inspect(name))["held"] == 0
        with pytest.raises(LockLost) as lost:
            async with mw.lock(name, wait_ms=0, lease_ms=300) as lock:
                await other.release(name, lock.token)
                await asyncio.wait_for(lock.lost.wait(), 3.0)
        assert lost.value.reason == "released"
