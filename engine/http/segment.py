"""The Segment / RudderStack tracking API (``/v1/batch``, ``/v1/track``, ...) over
:mod:`connectors.sources.segment`. Routes are added by :func:`install`.

What the official clients send, unchanged: ``POST {host}/v1/batch`` with ``{"batch":
[...], "sentAt"}``, the write key as HTTP basic user name (``analytics-python``,
``rudder-sdk-python``, ``@segment/analytics-node``) or as ``writeKey`` in the body (the
tracking API's body authentication), gzip bodies (``Content-Encoding: gzip``; RudderStack's
Python client compresses by default). The answer is Segment's: 200 ``{"success": true}``
once the events are durable (RudderStack's client takes nothing but 200 as success);
429 and 503 as ``/v1/events`` gives them; 4xx with the JSON error body naming the field.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from connectors.sources.exceptions import SourceError
from connectors.sources.segment import KINDS, MAX_BATCH_BYTES, parse, write_key_of
from engine.http import base as api

__all__ = ["PATHS", "install"]

logger = logging.getLogger(__name__)

SOURCE = "segment"
PATHS: dict[str, str] = {"/v1/batch": "batch", **{f"/v1/{kind}": kind for kind in sorted(KINDS)}}
"""Route path -> what its body is (a batch, or one message of that type)."""
_GZIP_MAGIC = b"\x1f\x8b"
_SUCCESS = b'{"success":true}'


def _gunzip(body: bytes) -> bytes:
    """A gzip body aiohttp left compressed (it decompresses ``Content-Encoding: gzip``
    itself, in bounded steps and under ``client_max_size``), decompressed with the same
    care: never more than the batch limit plus one byte, so a gzip bomb costs 500 KB."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(body, MAX_BATCH_BYTES + 1)
    except zlib.error as err:
        raise SourceError(f"body is not valid gzip: {err}", code="invalid_gzip") from None
    if len(out) <= MAX_BATCH_BYTES and not d.eof:
        raise SourceError("body is truncated gzip", code="invalid_gzip")
    if len(out) > MAX_BATCH_BYTES:
        raise SourceError(
            f"a batch request is at most {MAX_BATCH_BYTES} bytes (decompressed)",
            status=413,
            code="batch_too_large",
            limit_bytes=MAX_BATCH_BYTES,
        )
    return out


def _basic(key: str) -> str:
    """The write key as basic-auth credentials (user name, empty password)."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _handler(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        header = "Authorization" in request.headers
        if header and (denied := api.auth(request, "write", SOURCE)) is not None:
            return denied
        body = await request.read()  # over client_max_size: 413 body_too_large (middleware)
        try:
            if body[:2] == _GZIP_MAGIC:
                body = _gunzip(body)
            if not header:  # Segment's body authentication: {"writeKey": ...}
                key = write_key_of(body)
                basic = (
                    None
                    if key is None
                    else "Basic " + base64.b64encode(f"{key}:".encode()).decode()
                )
                if (denied := api.auth(request, "write", SOURCE, basic)) is not None:
                    return denied
            events = parse(body, kind, api.backend_of(request.app).clock.now())
        except SourceError as err:
            return api.reject(request, SOURCE, err)
        resp = await api.submit(request, events, None, SOURCE)
        if resp.status != 202:
            return resp  # 429 with Retry-After, 503: as /v1/events answers them
        return web.Response(status=200, body=_SUCCESS, content_type="application/json")

    handle.__name__ = f"segment_{kind}"
    return handle


def install(app: web.Application) -> None:
    """Add the tracking API routes to ``app``: ``POST /v1/batch`` and the single-message
    ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group``,
    ``/v1/alias``; their rejections count under ``source="segment"``."""
    for path, kind in PATHS.items():
        api.add_source_route(app, "POST", path, _handler(kind), SOURCE)
