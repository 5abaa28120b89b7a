"""Schemathesis hooks for scripts/fuzz-api.sh (loaded through SCHEMATHESIS_HOOKS).

Generated `Idempotency-Key` values collide all the time ("0", "a", ...), and the hub rightly answers
a reused key with another body by 422 `idempotency_key_reused`, so most writes would test nothing
past the idempotency check. A valid generated key is therefore made unique per request; an invalid
one (empty, too long) is kept, so that its 400 is still checked. Replays are covered by the
end-to-end suite (crates/clientele/tests/idempotency.rs).

A long poll of the change feed (`wait`, up to 60 seconds as documented) answers when the wait is
over, past the client's 10-second read timeout, which schemathesis reports as a network error. A
generated `wait` is therefore cut to 2 seconds; long polls are covered end to end
(crates/clientele/tests/changes.rs).
"""

import uuid

import schemathesis

HEADER = "idempotency-key"
LONGEST_WAIT = 2


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if name.lower() == HEADER and isinstance(value, str) and 1 <= len(value) <= 255:
            headers[name] = f"fuzz-{uuid.uuid4()}"
    query = case.query or {}
    wait = query.get("wait")
    if case.path == "/v1/changes" and isinstance(wait, int) and wait > LONGEST_WAIT:
        query["wait"] = LONGEST_WAIT
