"""What a Lambda function needs from a client made once, in module scope:
each invocation's own deadline, a distinct DeadlineExceeded, a body's work
kept when the final release fails, models that ignore fields a newer
service adds, and a private CA for an HTTPS service."""

import socket
import time

import pytest

from conftest import KEY, sql, make_certificates, unique
from middleway_client import (AsyncMiddleway, Batch, DeadlineExceeded, Lock, LockTimeout, Middleway,
                              Unavailable)


class Context:
    """Lambda's context, as the Python runtime gives it: time left until its end."""

    def __init__(self, ms: float) -> None:
        self.ends_at = time.monotonic() + ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self.ends_at - time.monotonic()) * 1000)


def test_one_module_scope_client_honours_each_invocations_context(service):
    with Middleway(service.url, KEY) as mw:
        name = unique("ctx")
        held = mw.acquire(name, lease_ms=10_000)
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            mw.acquire(name, wait_ms=5000, context=Context(800))
        assert time.monotonic() - started < 0.8, "answered within the invocation"
        mw.release(name, held.token)
        # The next invocation, same client, its own (long) context.
        again = mw.acquire(name, wait_ms=5000, context=Context(10_000))
        assert again.fence > held.fence
        mw.release(name, again.token, context=Context(10_000))


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_a_deadline_that_passes_is_deadline_exceeded_not_unavailable(silent_server):
    with Middleway(silent_server, KEY, timeout_s=5.0) as mw:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exceeded:
            mw.transcription(1, context=Context(900))
        assert not isinstance(exceeded.value, Unavailable)
        took = time.monotonic() - started
        assert 0.5 <= took < 0.9, f"ended 250 ms before the invocation ({took:.2f} s)"
        with pytest.raises(DeadlineExceeded) as unknown:
            mw.acquire("never", wait_ms=100, deadline_s=0.4)
        assert unknown.value.outcome_unknown


async def test_the_async_client_takes_the_context_too(silent_server):
    async with AsyncMiddleway(silent_server, KEY, timeout_s=5.0) as mw:
        with pytest.raises(DeadlineExceeded):
            await mw.transcription(1, context=Context(700))


def test_lock_keeps_the_bodys_work_when_the_final_release_fails(start_service):
    own = start_service()
    failures = []
    with Middleway(own.url, KEY, retries=1, on_release_error=lambda e, lock: failures.append((e, lock))) as mw:
        with mw.lock(unique("release-fails"), lease_ms=10_000) as lock:
            own.stop()  # the service goes away while the body runs
            work = "done"
    assert work == "done"
    assert len(failures) == 1
    error, released = failures[0]
    assert isinstance(error, (Unavailable, DeadlineExceeded)), repr(error)
    assert released.token == lock.token


def test_ids_above_2_53_come_back_exactly(service):
    big = 2**53 + 1
    sql(f"REPLACE INTO transcriptions (transcription_id, call_id, language, status, created_at, updated_at)"
        f" VALUES ({big}, 'big-call', 'en', 'completed', NOW(3), NOW(3))")
    with Middleway(service.url, KEY) as mw:
        assert mw.transcription(big)["transcription_id"] == big
        batch = mw.transcriptions([big, big + 2])
        assert [t["transcription_id"] for t in batch.transcriptions] == [big]
        assert batch.missing == [big + 2]


def test_models_ignore_fields_a_newer_service_adds():
    batch = Batch.from_json({"transcriptions": [{"transcription_id": 1}], "missing": [2], "next_page": "x"})
    assert batch == Batch([{"transcription_id": 1}], [2])
    lock = Lock.from_grant({"name": "n", "token": "t", "fence": 3, "lease_ms": 10, "expires_at": "e",
                            "holder_region": "eu-west-1"})
    assert (lock.name, lock.fence) == ("n", 3)


def test_an_https_service_with_a_private_ca_is_trusted_with_ca_file_only(start_service, tmp_path):
    certs = make_certificates(tmp_path)
    tls = start_service(TLS_CERT_FILE=certs["cert"], TLS_KEY_FILE=certs["key"])
    assert tls.url.startswith("https://")
    with Middleway(tls.url, KEY, ca_file=certs["ca"]) as mw:
        assert mw.transcription(7)["transcription_id"] == 7
        lock = mw.acquire(unique("tls"))
        mw.release(lock.name, lock.token)
    with Middleway(tls.url, KEY, retries=0) as untrusted:
        with pytest.raises(Unavailable):
            untrusted.transcription(7)
