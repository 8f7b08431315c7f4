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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.sources.config import SourcesConfig
from engine import console
from engine.analytics.source import HistorySource
from engine.events import INTERNAL_TYPES, decode_event, validate_properties
from engine.exceptions import EventError, NotReady
from engine.http import models, reports, segment, segments, webhooks
from engine.http import rules as rule_routes
from engine.http.auth import Tokens
from engine.http.base import (
    ADDRESS_BOOK,
    BACKEND,
    LIMITS,
    METRICS,
    ROUTE_SOURCES,
    TOKENS,
    add_source_route,
    auth,
    backpressure,
    error,
    errors_middleware,
    ok,
    submit,
)
from engine.metrics import Metrics
from engine.types import Event
from rules.exceptions import RuleErrors
from rules.ruleset import load_texts
from state.addresses import AddressBook, MemoryAddressBook

__all__ = ["OPENAPI_PATH", "create_app"]

logger = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).parent / "openapi.json"
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_event_list = msgspec.json.Decoder(list[Event])
_event = msgspec.json.Decoder(Event)


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
    metrics = request.app[METRICS]
    _max_body, max_events = request.app[LIMITS]
    body = await request.read()
    early = getattr(request.app[BACKEND], "early_refusal", None)
    if early is not None and (bp := early()) is not None:  # overloaded: no need to decode
        return backpressure(bp)
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


async def get_rules(request: web.Request) -> web.Response:
    if (denied := auth(request, "read")) is not None:
        return denied
    b = request.app[BACKEND]
    rs = b.ruleset
    rules = [
        {
            "id": r.id,
            "version": r.version,
            "priority": r.priority,
            "trigger": r.trigger,
            "digest": r.digest,
            # earlier versions kept for open flows, newest first (rules/versions.py)
            "kept_versions": [old.version for old in rs.retired.get(r.id, ())],
            "on_update": "move" if r.id in rs.moving else "keep",
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
    metrics = request.app[METRICS]
    try:
        version = await request.app[BACKEND].deploy(files)
    except RuleErrors as err:
        metrics.rule_deploys.labels("rejected").inc()
        return _rule_errors(err)
    metrics.rule_deploys.labels("ok").inc()
    rs = request.app[BACKEND].ruleset
    return ok(
        {"version": version, "rules": len(rs.rules), "warnings": rule_routes.deploy_warnings(rs)}
    )


async def validate_rules(request: web.Request) -> web.Response:
    if (denied := auth(request, "read")) is not None:
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
    """The customer's view from the backend (the distributed ingest asks the worker that
    owns it: 503 with ``Retry-After`` when no answer comes in time)."""
    return await _customer_document(request, "read", "customer")


async def export_customer(request: web.Request) -> web.Response:
    """Everything held about the customer, as one JSON document (admin: personal data)."""
    return await _customer_document(request, "admin", "export")


async def _customer_document(request: web.Request, scope: str, method: str) -> web.Response:
    if (denied := auth(request, scope)) is not None:
        return denied
    fetch = getattr(request.app[BACKEND], method)
    try:
        status, body = await fetch(request.match_info["customer_id"])
    except NotReady as nr:
        return _retry_later(nr)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def delete_customer(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    cid = request.match_info["customer_id"]
    flag = request.query.get("suppress", "false")
    if flag not in ("true", "false"):
        return error(400, "invalid_field", "suppress must be true or false", field="suppress")
    try:
        erased = await request.app[BACKEND].erase(cid, suppress=flag == "true")
    except NotReady as nr:
        return _retry_later(nr)
    # the address book (provider callbacks' phone -> customer) belongs to the HTTP layer
    erased["addresses"] = await request.app[ADDRESS_BOOK].erase(cid)
    return ok({"erased": erased})


def _retry_later(nr: NotReady, seconds: int = 2) -> web.Response:
    resp = error(503, "not_ready", str(nr), retry_after=seconds)
    resp.headers["Retry-After"] = str(seconds)
    return resp


async def metrics_view(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when ready; 503 naming why not (the embedded runtime: starting or stopping, a
    vital background task down, a storage fault such as a full disk)."""
    backend = request.app[BACKEND]
    explain = getattr(backend, "unready_reasons", None)
    if explain is not None:
        reasons: list[str] = explain()
    else:
        reasons = [] if backend.ready else ["starting, recovering or stopping"]
    if not reasons:
        return ok({"status": "ready"})
    return error(503, "not_ready", "; ".join(reasons), reasons=reasons)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


def create_app(
    backend: Any,
    tokens: Tokens,
    metrics: Metrics,
    *,
    max_body: int = 1 << 20,
    max_events: int = 1000,
    sources: SourcesConfig | None = None,
    address_book: AddressBook | None = None,
    history: HistorySource | None = None,
) -> web.Application:
    """The API over ``backend`` (the embedded Runtime, or the distributed ingest).
    ``history``: the console's customer timeline source when the backend does not serve
    one itself (``nudge run``: its data directory's journal and outbox)."""
    app = web.Application(client_max_size=max_body, middlewares=[errors_middleware])
    app[BACKEND] = backend
    app[TOKENS] = tokens
    app[METRICS] = metrics
    app[LIMITS] = (max_body, max_events)
    app[ROUTE_SOURCES] = {}
    app[ADDRESS_BOOK] = address_book if address_book is not None else MemoryAddressBook()
    add_source_route(app, "POST", "/v1/events", post_events, "native")
    segment.install(app)
    segments.install(app)
    reports.install(app)
    console.install(app, history=history)
    models.install(app)
    webhooks.install(app, sources if sources is not None else SourcesConfig.load())
    app.router.add_get("/v1/rules", get_rules)
    app.router.add_put("/v1/rules", put_rules)
    app.router.add_post("/v1/rules/validate", validate_rules)
    rule_routes.install(app)
    app.router.add_get("/v1/customers/{customer_id}", get_customer)
    app.router.add_delete("/v1/customers/{customer_id}", delete_customer)
    app.router.add_get("/v1/customers/{customer_id}/export", export_customer)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    return app
