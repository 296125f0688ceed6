"""analytics: the shop's review statistics, written in Python (componentize-py).

A plain `wasi:http/proxy@0.2` component (it exports `wasi:http/incoming-handler`
and imports nothing beyond WASI 0.2), so it runs on wasmhive and unmodified on
any other WASI 0.2 HTTP host such as `wasmtime serve -Scli`.

Route:

    GET /v1/reviews/{sku}
        200 {"sku": "<sku>", "rating": 4.2, "reviews": 17}

        The numbers are made up but deterministic: both are derived from a
        SHA-256 of the sku, so the same sku always gets the same answer (on
        every host, in every instance). `rating` is between 1.0 and 5.0 with
        one decimal, `reviews` between 0 and 999. A sku is letters, digits,
        `-` and `_` (as in the catalog); anything else is 400.

Errors are JSON `{"error": "<message>"}`: 404 for any other path, 405 (with
`allow: GET`) for another method on the route, 400 for an invalid sku.

Environment: `DELAY_MS` (default 0) makes every answer wait that many
milliseconds first (to demonstrate timeouts, circuit breakers and fallbacks
in the callers). It is read on each request, never at build time:
componentize-py runs module-level code while building the component.

Build: see README.md beside this file (`just build-python`).
"""

import hashlib
import json
import os
import re

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import monotonic_clock
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

ROUTE_PREFIX = "/v1/reviews/"
SKU = re.compile(r"[A-Za-z0-9_-]{1,128}")
# wasi:io output streams take at most 4096 bytes per blocking write.
CHUNK = 4096


def reviews_of(sku: str) -> dict:
    """The made-up, deterministic statistics of one sku."""
    digest = hashlib.sha256(sku.encode("utf-8")).digest()
    rating = 10 + int.from_bytes(digest[0:4], "big") % 41  # 10..50 tenths
    reviews = int.from_bytes(digest[4:8], "big") % 1000
    return {"sku": sku, "rating": rating / 10, "reviews": reviews}


def delay_ms() -> int:
    """DELAY_MS from the environment the host granted; 0 when unset or invalid."""
    try:
        return max(0, int(os.environ.get("DELAY_MS", "0").strip() or "0"))
    except ValueError:
        return 0


def route(method, path: str):
    """(status, body dict, extra headers) for a request."""
    if not path.startswith(ROUTE_PREFIX):
        return 404, {"error": f"no route for {path}"}, []
    sku = path[len(ROUTE_PREFIX):]
    if not sku or "/" in sku:
        return 404, {"error": f"no route for {path}"}, []
    if not isinstance(method, Method_Get):
        return 405, {"error": "method not allowed (allowed: GET)"}, [("allow", b"GET")]
    if not SKU.fullmatch(sku):
        return 400, {"error": "invalid sku: letters, digits, '-' and '_' only"}, []
    return 200, reviews_of(sku), []


def respond(out: ResponseOutparam, status: int, body: dict, headers) -> None:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    fields = Fields.from_list(
        [("content-type", b"application/json"), ("content-length", str(len(data)).encode())]
        + headers
    )
    response = OutgoingResponse(fields)
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(out, Ok(response))
    with outgoing.write() as stream:
        for start in range(0, len(data), CHUNK):
            stream.blocking_write_and_flush(data[start : start + CHUNK])
    OutgoingBody.finish(outgoing, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        path = (request.path_with_query() or "/").split("?", 1)[0]
        status, body, headers = route(method, path)
        delay = delay_ms()
        if delay:
            monotonic_clock.subscribe_duration(delay * 1_000_000).block()
        respond(response_out, status, body, headers)
