"""A worker that holds a lock while the test freezes it (SIGSTOP) past its
lease, then writes to the fenced store as a naive worker would. One JSON line per step."""

import json
import sys
import time

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])

from conftest import fenced_write  # noqa: E402
from middleway_client import LockLost, Middleway  # noqa: E402

url, key, name, store_key = sys.argv[1:]
mw = Middleway(url, key)


def say(line):
    print(json.dumps(line), flush=True)


try:
    with mw.lock(name, wait_ms=0, lease_ms=1000) as lock:
        say({"acquired": lock.fence})
        time.sleep(1.5)  # frozen in here
        say({"write": "accepted" if fenced_write(store_key, lock.fence, "late") else "refused"})
    say({"outcome": "kept"})
except LockLost as lost:
    say({"outcome": "LockLost", "reason": lost.reason})
