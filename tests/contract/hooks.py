"""Schemathesis hooks for the contract fuzz run.

A schema-valid acquire may wait up to 120 s when an earlier example holds the
same lock name. Valid waits are capped at one second so the run stays short;
out-of-range values are left alone so negative tests still see them.
"""
import schemathesis


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        wait = body.get("wait_ms")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 1000 < wait <= 120000:
            body["wait_ms"] = 1000
    return body
