"""The aiohttp application: ingest, rules, customers, metrics, health, OpenAPI.

Limits (documented in docs/api.md and the OpenAPI file): a request body of at most
``max_body`` bytes (1 MiB) -> else 413; at most ``max_events`` (1,000) events per request ->
else 413; a full pipeline -> 429 with ``Retry-After``. Every error is JSON:
``{"error": {"code", "message", ...}}``; a bad event batch is rejected whole with the index
and field of each bad event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.sources.config import SourcesConfig
from connectors.sources.exceptions import SourceError
from engine.embedded.exceptions import Backpressure, NotReady
from engine.events import INTERNAL_TYPES, decode_event, encode_events, validate_properties
from engine.exceptions import EventError
from engine.http.auth import Tokens
from engine.http.views import customer_json
from engine.metrics import Metrics
from engine.types import Event
from rules.exceptions import RuleErrors
from rules.ruleset import load_texts
from state.addresses import AddressBook, MemoryAddressBook, record_addresses

__all__ = [
    "ADDRESS_BOOK",
    "OPENAPI_PATH",
    "add_source_route",
    "auth",
    "backend_of",
    "create_app",
    "error",
    "metrics_of",
    "ok",
    "reject",
    "submit",
]

logger = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).parent / "openapi.json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_event_list = msgspec.json.Decoder(list[Event])
_event = msgspec.json.Decoder(Event)
_BACKEND: web.AppKey[Any] = web.AppKey("backend", object)
_TOKENS: web.AppKey[Tokens] = web.AppKey("tokens", Tokens)
_METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
_LIMITS: web.AppKey[tuple[int, int]] = web.AppKey("limits", tuple)
_ROUTE_SOURCES: web.AppKey[dict[str, str]] = web.AppKey("route_sources", dict)
ADDRESS_BOOK: web.AppKey[AddressBook] = web.AppKey("nudge_address_book")
"""Address -> customer (state/addresses.py), recorded from the profile events every
ingest route accepts; provider callbacks that name only an address look it up. A
runtime passes a durable one to ``create_app`` (embedded: SQLite in the data dir;
distributed ingest: Redis); without one it is in memory, lost on restart."""


def backend_of(app: web.Application) -> Any:
    """The backend the app serves (the embedded Runtime, or the distributed ingest)."""
    return app[_BACKEND]


def metrics_of(app: web.Application) -> Metrics:
    return app[_METRICS]


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _route(request: web.Request) -> str:
    info = request.match_info
    if isinstance(info, web.UrlMappingMatchInfo) and info.route.resource is not None:
        return info.route.resource.canonical
    return "unmatched"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[_METRICS]
    try:
        resp = await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        source = request.app[_ROUTE_SOURCES].get(_route(request))
        if source is not None:  # a rule file too large is not an event
            metrics.events_rejected.labels(source, "body_too_large").inc()
        resp = error(
            413,
            "body_too_large",
            exc.text or "request body too large",
            limit_bytes=request.app[_LIMITS][0],
        )
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        resp = error(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # a 405 must say which methods are (RFC 9110 15.5.6)
            resp.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        resp = error(500, "internal", "internal error")
    metrics.http_requests.labels(_route(request), str(resp.status)).inc()
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
    got = request.app[_TOKENS].scope_of(header)
    if got is None:
        request.app[_METRICS].events_rejected.labels(source, "unauthorized").inc()
        return error(401, "unauthorized", "missing or invalid bearer token or write key")
    if scope == "admin" and got != "admin":
        return error(403, "forbidden", "this endpoint needs the admin token")
    return None


def _fast_decode(body: bytes, is_array: bool) -> list[Event] | None:
    """All events of a valid body in one msgspec pass; None if anything is wrong."""
    try:
        events = _event_list.decode(body) if is_array else [_event.decode(body)]
        for ev in events:
            validate_properties(ev)
    except (msgspec.MsgspecError, EventError, RecursionError):
        return None
    return events


@dataclass
class _Diagnosis:
    response: web.Response
    rejected: list[str]


def _diagnose(body: bytes, is_array: bool, max_events: int) -> _Diagnosis:
    """The 4xx answer for a body the fast path refused, naming each bad event's field."""
    try:
        raws = _raw_list.decode(body) if is_array else [msgspec.Raw(body)]
    except (msgspec.MsgspecError, RecursionError) as err:  # RecursionError: nested too deep
        return _Diagnosis(
            error(400, "invalid_json", f"body is not JSON: {err}", field="$"), ["invalid_json"]
        )
    if len(raws) > max_events:
        return _Diagnosis(
            error(
                413,
                "too_many_events",
                f"at most {max_events} events per request",
                limit_events=max_events,
            ),
            ["too_many_events"],
        )
    bad = []
    for i, raw in enumerate(raws):
        try:
            decode_event(bytes(raw))
        except EventError as err:
            bad.append({"index": i, **err.to_dict()})
    if not bad or (not is_array and bad[0]["field"] == "$"):
        message = bad[0]["message"] if bad else "not an event object"
        return _Diagnosis(
            error(400, "invalid_json", f"body is not a JSON event object: {message}", field="$"),
            ["invalid_json"],
        )
    return _Diagnosis(
        error(
            400,
            "invalid_events",
            f"{len(bad)} of {len(raws)} events are invalid; nothing was accepted",
            events=bad,
        ),
        [str(b["reason"]) for b in bad],
    )


async def post_events(request: web.Request) -> web.Response:
    if (denied := auth(request, "write")) is not None:
        return denied
    metrics = request.app[_METRICS]
    _max_body, max_events = request.app[_LIMITS]
    body = await request.read()
    is_array = body.lstrip()[:1] == b"["
    events = _fast_decode(body, is_array)
    if events is None:  # something is wrong: find every bad event, name its field
        result = _diagnose(body, is_array, max_events)
        for err in result.rejected:
            metrics.events_rejected.labels("native", err).inc()
        return result.response
    if len(events) > max_events:
        metrics.events_rejected.labels("native", "too_many_events").inc()
        return error(
            413,
            "too_many_events",
            f"at most {max_events} events per request",
            limit_events=max_events,
        )
    if not events:
        metrics.events_rejected.labels("native", "empty_batch").inc()
        return error(400, "empty_batch", "no events in the request", field="$")
    for i, ev in enumerate(events):
        if ev.type in INTERNAL_TYPES:
            metrics.events_rejected.labels("native", "internal_type").inc()
            at = f"$[{i}].type" if is_array else "$.type"
            return error(400, "internal_type", f"{ev.type} is sent by the engine only", field=at)
    return await submit(request, events, body if is_array else b"[" + body + b"]", "native")


async def submit(
    request: web.Request, events: list[Event], body: bytes | None, source: str
) -> web.Response:
    """Hand ``events`` (valid, non-empty) to the backend; 202 once durable, 429 under
    backpressure, 503 when not ready. ``body`` is their JSON array (``None``: encoded
    here, for events a source mapped from another format)."""
    metrics = request.app[_METRICS]
    if body is None:
        body = encode_events(events)
    try:
        await request.app[_BACKEND].accept((events, body))
    except Backpressure as bp:
        metrics.events_rejected.labels(source, "backpressure").inc(len(events))
        resp = error(429, "backpressure", str(bp), retry_after=bp.retry_after)
        resp.headers["Retry-After"] = str(max(1, round(bp.retry_after)))
        return resp
    except NotReady as nr:
        return error(503, "not_ready", str(nr))
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
    request.app[_METRICS].events_rejected.labels(source, err.code).inc()
    extra = dict(err.extra)
    if err.field is not None:
        extra["field"] = err.field
    return error(err.status, err.code, err.message, **extra)


async def get_rules(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    b = request.app[_BACKEND]
    rs = b.ruleset
    rules = [
        {
            "id": r.id,
            "version": r.version,
            "priority": r.priority,
            "trigger": r.trigger,
            "digest": r.digest,
        }
        for r in sorted(rs.rules.values(), key=lambda r: r.sort_key())
    ]
    return ok({"version": b.rules_version, "rules": rules, "files": b.rules_files})


async def _rule_files(request: web.Request) -> dict[str, str] | web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as err:
        return error(400, "invalid_json", f"body is not JSON: {err}", field="$")
    files = body.get("files") if isinstance(body, dict) else None
    if (
        not isinstance(files, dict)
        or not files
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        return error(
            400, "invalid_field", 'expected {"files": {"name.yaml": "text"}}', field="$.files"
        )
    return files


def _rule_errors(err: RuleErrors) -> web.Response:
    return error(
        400,
        "invalid_rules",
        f"{len(err.errors)} error(s); rule set rejected",
        errors=[e.to_dict() for e in err.errors],
    )


async def put_rules(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    files = await _rule_files(request)
    if isinstance(files, web.Response):
        return files
    metrics = request.app[_METRICS]
    try:
        version = await request.app[_BACKEND].deploy(files)
    except RuleErrors as err:
        metrics.rule_deploys.labels("rejected").inc()
        return _rule_errors(err)
    metrics.rule_deploys.labels("ok").inc()
    return ok({"version": version, "rules": len(request.app[_BACKEND].ruleset.rules)})


async def validate_rules(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    files = await _rule_files(request)
    if isinstance(files, web.Response):
        return files
    try:
        # parsing is CPU work (a 1 MiB file: ~1.4 s): in a thread, the loop keeps serving
        rs = await asyncio.to_thread(load_texts, sorted(files.items()))
    except RuleErrors as err:
        return _rule_errors(err)
    return ok({"valid": True, "rules": sorted(rs.rules)})


async def get_customer(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    b = request.app[_BACKEND]
    cid = request.match_info["customer_id"]
    part = b.partition(cid)
    st = part.store.get(cid)
    if st is None:
        return error(404, "not_found", f"no customer {cid!r}")
    return ok(customer_json(st, b.ruleset, b.clock.now()))


async def delete_customer(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    return ok({"erased": await request.app[_BACKEND].erase(request.match_info["customer_id"])})


async def metrics_view(request: web.Request) -> web.Response:
    data = generate_latest(request.app[_METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[_BACKEND].ready:
        return ok({"status": "ready"})
    return error(503, "not_ready", "starting, recovering or stopping")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


def add_source_route(
    app: web.Application, method: str, path: str, handler: Handler, source: str
) -> None:
    """Serve ``path`` as an ingest route of ``source`` (its rejections, a body too large
    included, are counted under that source)."""
    app.router.add_route(method, path, handler)
    app[_ROUTE_SOURCES][path] = source


def create_app(
    backend: Any,
    tokens: Tokens,
    metrics: Metrics,
    *,
    max_body: int = 1 << 20,
    max_events: int = 1000,
    sources: SourcesConfig | None = None,
    address_book: AddressBook | None = None,
) -> web.Application:
    """The API over ``backend`` (the embedded Runtime, or the distributed ingest)."""
    app = web.Application(client_max_size=max_body, middlewares=[_errors])
    app[_BACKEND] = backend
    app[_TOKENS] = tokens
    app[_METRICS] = metrics
    app[_LIMITS] = (max_body, max_events)
    app[_ROUTE_SOURCES] = {}
    app[ADDRESS_BOOK] = address_book if address_book is not None else MemoryAddressBook()
    add_source_route(app, "POST", "/v1/events", post_events, "native")
    from engine.http import segment, webhooks  # they build on this module's helpers

    segment.install(app)
    webhooks.install(app, sources if sources is not None else SourcesConfig.load())
    app.router.add_get("/v1/rules", get_rules)
    app.router.add_put("/v1/rules", put_rules)
    app.router.add_post("/v1/rules/validate", validate_rules)
    app.router.add_get("/v1/customers/{customer_id}", get_customer)
    app.router.add_delete("/v1/customers/{customer_id}", delete_customer)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    return app
