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
from typing import Any, cast

from aiohttp import web

from connectors.sources.exceptions import SourceError
from connectors.sources.segment import KINDS, MAX_BATCH_BYTES, parse, write_key_of
from engine.http import app as api

__all__ = ["PATHS", "install"]

logger = logging.getLogger(__name__)

SOURCE = "segment"
PATHS: dict[str, str] = {"/v1/batch": "batch", **{f"/v1/{kind}": kind for kind in sorted(KINDS)}}
"""Route path -> what its body is (a batch, or one message of that type)."""
_GZIP_MAGIC = b"\x1f\x8b"
_SUCCESS = b'{"success":true}'


def _clock_ms(request: web.Request) -> int:
    """The backend's clock (the runtime's processing clock): Segment's receivedAt.

    engine/http/app.py keeps the backend under a module-private key and offers no accessor
    yet; reading it here is the one reach into that module's internals."""
    backend: Any = request.app[api._BACKEND]
    now: int = backend.clock.now()
    return now


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


class _WithKey:
    """What :func:`engine.http.app.auth` reads of a request (its app and headers), with
    the body's writeKey as basic-auth credentials. A request cannot be cloned with new
    headers once its body was read, and the key is in the body."""

    def __init__(self, request: web.Request, key: str) -> None:
        self.app = request.app
        token = base64.b64encode(f"{key}:".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}


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
                probe = request if key is None else cast(web.Request, _WithKey(request, key))
                if (denied := api.auth(probe, "write", SOURCE)) is not None:
                    return denied
            events = parse(body, kind, _clock_ms(request))
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
