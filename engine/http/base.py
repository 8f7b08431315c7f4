"""What every HTTP route shares: the app's keys, JSON answers and errors, the error
middleware, authentication, and handing accepted events to the backend (``submit``) or
refusing a source's request (``reject``). engine/http/app.py (the API's own routes and
``create_app``) and the tracking sources' routes (segment.py, webhooks.py) build on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from connectors.sources.exceptions import SourceError
from engine.events import encode_events
from engine.exceptions import Backpressure, NotReady, StorageUnavailable
from engine.http.auth import Tokens
from engine.metrics import Metrics
from engine.storage_faults import DISK_FULL, storage_cause
from engine.types import Event
from state.addresses import AddressBook, record_addresses

__all__ = [
    "ADDRESS_BOOK",
    "BACKEND",
    "LIMITS",
    "MAX_URL",
    "METRICS",
    "ROUTE_SOURCES",
    "TOKENS",
    "Handler",
    "add_source_route",
    "auth",
    "backend_of",
    "error",
    "errors_middleware",
    "metrics_of",
    "ok",
    "reject",
    "storage_error",
    "submit",
]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BACKEND: web.AppKey[Any] = web.AppKey("backend", object)
TOKENS: web.AppKey[Tokens] = web.AppKey("tokens", Tokens)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
LIMITS: web.AppKey[tuple[int, int]] = web.AppKey("limits", tuple)
ROUTE_SOURCES: web.AppKey[dict[str, str]] = web.AppKey("route_sources", dict)
ADDRESS_BOOK: web.AppKey[AddressBook] = web.AppKey("nudge_address_book")
"""Address -> customer (state/addresses.py), recorded from the profile events every
ingest route accepts; provider callbacks that name only an address look it up. A
runtime passes a durable one to ``create_app`` (embedded: SQLite in the data dir;
distributed ingest: Redis); without one it is in memory, lost on restart."""


MAX_URL = 8192
"""Longest request target (path and query) served; longer ones get a JSON 414. Up to
``nudge run``'s parser limit (64 KiB: engine/embedded/server.py), beyond which aiohttp
itself answers 400 in plain text."""


def backend_of(app: web.Application) -> Any:
    """The backend the app serves (the embedded Runtime, or the distributed ingest)."""
    return app[BACKEND]


def metrics_of(app: web.Application) -> Metrics:
    return app[METRICS]


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def storage_error(err: StorageUnavailable) -> web.Response:
    """507 (disk full) or 503 (I/O error) with ``Retry-After``: nothing was accepted."""
    code = "insufficient_storage" if err.cause == DISK_FULL else "storage_unavailable"
    resp = error(err.status, code, str(err), retry_after=err.retry_after, store=err.store)
    resp.headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return resp


def ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _route(request: web.Request) -> str:
    info = request.match_info
    if isinstance(info, web.UrlMappingMatchInfo) and info.route.resource is not None:
        return info.route.resource.canonical
    return "unmatched"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    t0 = time.perf_counter()
    try:
        if len(request.raw_path) > MAX_URL:
            raise web.HTTPRequestURITooLong()
        resp = await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        source = request.app[ROUTE_SOURCES].get(_route(request))
        if source is not None:  # a rule file too large is not an event
            metrics.events_rejected.labels(source, "body_too_large").inc()
        resp = error(
            413,
            "body_too_large",
            exc.text or "request body too large",
            limit_bytes=request.app[LIMITS][0],
        )
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed", 414: "uri_too_long"}.get(
            exc.status, "http_error"
        )
        resp = error(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # a 405 must say which methods are (RFC 9110 15.5.6)
            resp.headers["Allow"] = exc.headers["Allow"]
    except StorageUnavailable as err:
        resp = storage_error(err)
    except Exception as exc:
        cause = storage_cause(exc)
        if cause is not None:  # a write to the data directory failed (a deploy, an erase)
            logger.error("%s %s: storage error: %s", request.method, request.path, exc)
            resp = storage_error(StorageUnavailable("data", cause, str(exc)))
        else:
            logger.exception("unhandled error on %s %s", request.method, request.path)
            resp = error(500, "internal", "internal error")
    route = _route(request)
    metrics.http_requests.labels(route, str(resp.status)).inc()
    metrics.http_request_seconds.labels(route).observe(time.perf_counter() - t0)
    return resp


def backpressure(bp: Backpressure) -> web.Response:
    """The 429 for a refused request, with ``Retry-After`` (whole seconds, at least 1)."""
    resp = error(429, "backpressure", str(bp), retry_after=bp.retry_after)
    resp.headers["Retry-After"] = str(max(1, round(bp.retry_after)))
    return resp


def auth(
    request: web.Request, scope: str, source: str = "native", header: str | None = None
) -> web.Response | None:
    """None if the request's credentials have ``scope``, else the 401/403 answer. A
    bearer token, or HTTP basic auth with the token as user name (how Segment and
    RudderStack clients send their write key). ``header``: an Authorization value to
    check instead of the request's (a source whose credentials travel in the body)."""
    if header is None:
        header = request.headers.get("Authorization")
    got = request.app[TOKENS].scope_of(header)
    if got is None:
        request.app[METRICS].events_rejected.labels(source, "unauthorized").inc()
        return error(401, "unauthorized", "missing or invalid bearer token or write key")
    if not Tokens.allows(got, scope):
        return error(403, "forbidden", f"this endpoint needs the {scope} or admin token")
    return None


async def submit(
    request: web.Request, events: list[Event], body: bytes | None, source: str
) -> web.Response:
    """Hand ``events`` (valid, non-empty) to the backend; 202 once durable, 429 under
    backpressure, 503 when not ready, 507 (disk full) or 503 (I/O error) with
    ``Retry-After`` when the journal write failed. ``body`` is their JSON array (``None``: encoded
    here, for events a source mapped from another format)."""
    metrics = request.app[METRICS]
    if body is None:
        body = encode_events(events)
    try:
        await request.app[BACKEND].accept((events, body))
    except Backpressure as bp:
        metrics.events_rejected.labels(source, "backpressure").inc(len(events))
        return backpressure(bp)
    except NotReady as nr:
        return error(503, "not_ready", str(nr))
    except StorageUnavailable as err:
        metrics.events_rejected.labels(source, err.cause).inc(len(events))
        return storage_error(err)
    await _remember_addresses(request.app, events)
    return ok({"accepted": len(events)}, status=202)


async def _remember_addresses(app: web.Application, events: list[Event]) -> None:
    """Record the email addresses and phone numbers of accepted profile events (after
    they are durable: failures are logged, never fail the request)."""
    book = app.get(ADDRESS_BOOK)
    if book is None:
        return
    try:
        await record_addresses(book, events)
    except Exception:
        logger.exception("could not record addresses")


def reject(request: web.Request, source: str, err: SourceError) -> web.Response:
    """The 4xx answer for a source request refused whole, counted by source and code."""
    request.app[METRICS].events_rejected.labels(source, err.code).inc()
    extra = dict(err.extra)
    if err.field is not None:
        extra["field"] = err.field
    return error(err.status, err.code, err.message, **extra)


def add_source_route(
    app: web.Application, method: str, path: str, handler: Handler, source: str
) -> None:
    """Serve ``path`` as an ingest route of ``source`` (its rejections, a body too large
    included, are counted under that source)."""
    app.router.add_route(method, path, handler)
    app[ROUTE_SOURCES][path] = source
