import http.server
import threading
import time

import pytest

from conftest import KEY
from middleway_client import AsyncMiddleway, DeadlineExceeded, InvalidRequest, Middleway, Unauthorized, Unavailable


def test_a_transcription_is_a_dict_and_a_missing_one_none(service):
    with Middleway(service.url, KEY) as mw:
        assert mw.transcription(7)["transcription_id"] == 7
        assert mw.transcription(999999) is None


def test_a_batch_keeps_the_order_asked_and_lists_the_missing(service):
    with Middleway(service.url, KEY) as mw:
        batch = mw.transcriptions([9, 999999, 3])
    assert [t["transcription_id"] for t in batch.transcriptions] == [9, 3]
    assert batch.missing == [999999]


def test_bad_input_names_the_field_and_a_wrong_key_is_unauthorized(service):
    with Middleway(service.url, KEY) as mw:
        with pytest.raises(InvalidRequest) as bad:
            mw.transcription("07")
        assert bad.value.fields[0]["field"] == "id" and bad.value.status == 400
    with Middleway(service.url, "wrong-key-0123456789") as wrong:
        with pytest.raises(Unauthorized):
            wrong.transcription(1)


def test_a_killed_service_is_unavailable_once_retried_and_deadline_exceeded_when_time_runs_out(start_service):
    doomed = start_service()
    doomed.stop()
    with Middleway(doomed.url, KEY, retries=2) as mw:
        with pytest.raises(Unavailable):
            mw.transcription(1, deadline_s=5.0)
    with Middleway(doomed.url, KEY, retries=100) as mw:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exceeded:
            mw.transcription(1, deadline_s=1.5)
        assert isinstance(exceeded.value.__cause__, Unavailable)
        assert time.monotonic() - started < 2.5


def test_a_shedding_replica_is_retried_after_retry_after(start_service):
    busy = start_service(MAX_IN_FLIGHT="1")
    retries = []
    with Middleway(busy.url, KEY, on_retry=lambda n, delay, cause: retries.append((delay, cause))) as mw:
        mw.acquire("shed-test", lease_ms=5000)
        waiter = threading.Thread(target=lambda: pytest.raises(Exception, Middleway(busy.url, KEY).acquire,
                                                               "shed-test", wait_ms=1200))
        waiter.start()
        time.sleep(0.2)
        assert mw.transcription(5)["transcription_id"] == 5
        waiter.join()
    assert retries, "retried"
    delay, cause = retries[0]
    assert cause == 503 and delay >= 1.0


def test_the_callers_traceparent_is_sent():
    seen = []

    class Probe(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("traceparent"))
            self.send_response(404)
            self.send_header("content-type", "application/problem+json")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with Middleway(f"http://127.0.0.1:{server.server_port}", KEY, traceparent=lambda: traceparent) as mw:
        assert mw.transcription(1) is None
    server.shutdown()
    assert seen == [traceparent]


async def test_the_async_client_reads_and_batches(service):
    async with AsyncMiddleway(service.url, KEY) as mw:
        assert (await mw.transcription(4))["transcription_id"] == 4
        assert (await mw.transcriptions([4, 999999])).missing == [999999]
