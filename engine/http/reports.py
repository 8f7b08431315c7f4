"""Campaign reports over HTTP (docs/api.md, "Reports"; docs/analytics.md): every rule's
totals and daily series, one rule's funnel, variants and series, and an experiment's
arms with lift, confidence interval, SRM check and verdict. Read token (or admin).

Counts come from the backend's report source (engine/analytics/source.py: ``nudge run``
itself, or the distributed ingest's Redis store); the backend also offers ``ruleset``,
``clock`` and ``ready``. One without a source (the distributed ingest with analytics
off) answers 501 ``not_served_here``. Days are UTC days of processing time.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from aiohttp import web

from engine.analytics.report import (
    Counts,
    day_number,
    day_totals,
    experiment,
    gather,
    rule_detail,
    rules_summary_totals,
)
from engine.analytics.source import AnalyticsSource, source_of
from engine.http.base import BACKEND, auth, error, ok
from engine.types import from_ms
from rules.compiler import CompiledRule

__all__ = ["DEFAULT_DAYS", "MAX_DAYS", "MAX_HOURLY_DAYS", "install"]

DEFAULT_DAYS = 30
"""Days reported when ``from`` is not given (ending at ``to``, default today)."""
MAX_DAYS = 800
MAX_HOURLY_DAYS = 8  # hours are kept 8 days (engine/embedded/storage/analytics.py)


def _backend(request: web.Request) -> Any:
    backend = request.app[BACKEND]
    if source_of(backend) is None:
        return error(
            501,
            "not_served_here",
            "this backend keeps no campaign analytics (`nudge run --analytics on`, "
            "`nudge worker --analytics on` count them)",
        )
    if not backend.ready:
        return error(503, "not_ready", "starting, recovering or stopping")
    return backend


def _range(request: web.Request, backend: Any, max_days: int) -> tuple[int, int] | web.Response:
    today = from_ms(backend.clock.now()).date()
    q = request.query
    days: dict[str, date] = {}
    for name in ("from", "to"):
        raw = q.get(name)
        if raw is None:
            continue
        try:
            days[name] = date.fromisoformat(raw)
        except ValueError:
            return error(400, "invalid_field", f"{name}: a date, YYYY-MM-DD", field=name)
    to = days.get("to", today)
    first = days.get("from")
    if first is None:  # the default span back from ``to``, not before year 1
        back = (to - date.min).days
        first = to - timedelta(days=min(DEFAULT_DAYS, max_days, back + 1) - 1)
    if first > to:
        return error(400, "invalid_field", "from: after to", field="from")
    if (to - first).days + 1 > max_days:
        return error(400, "invalid_field", f"from: at most {max_days} days to to", field="from")
    return day_number(first), day_number(to)


def _open(request: web.Request, max_days: int = MAX_DAYS) -> tuple[Any, int, int] | web.Response:
    """What every report handler starts with: the read token, a backend keeping
    analytics and ready, the ``from``/``to`` days (at most ``max_days``)."""
    if (denied := auth(request, "read")) is not None:
        return denied
    backend = _backend(request)
    if isinstance(backend, web.Response):
        return backend
    span = _range(request, backend, max_days)
    if isinstance(span, web.Response):
        return span
    return backend, span[0], span[1]


def _version(request: web.Request) -> int | web.Response | None:
    if "version" not in request.query:
        return None
    try:
        return int(request.query["version"])
    except ValueError:
        return error(400, "invalid_field", "version: an integer", field="version")


def _rule(backend: Any, rule_id: str) -> CompiledRule | None:
    rs = backend.ruleset
    rule = rs.rules.get(rule_id) if rs is not None else None
    return rule if isinstance(rule, CompiledRule) else None


def _source(backend: Any) -> AnalyticsSource:
    source = source_of(backend)
    assert source is not None  # checked by _open
    return source


async def _counts(
    backend: Any, hourly: bool, first: int, last: int, rule_id: str | None, version: int | None
) -> Counts:
    stored, mem = await _source(backend).analytics_counts(hourly, first, last, rule_id)
    return gather(stored, mem, hourly, first, last, rule_id, version)


async def list_rules(request: web.Request) -> web.Response:
    opened = _open(request)
    if isinstance(opened, web.Response):
        return opened
    backend, first, last = opened
    known = list(backend.ruleset.rules) if backend.ruleset is not None else []
    stored, mem = await _source(backend).analytics_totals(first, last)  # no count decoded
    rules = rules_summary_totals(day_totals(stored, mem, first, last), first, last, known)
    return ok({"from": _iso_day(first), "to": _iso_day(last), "rules": rules})


def _iso_day(n: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=n)).isoformat()


async def get_rule(request: web.Request) -> web.Response:
    granularity = request.query.get("granularity", "day")
    hourly = granularity == "hour"
    opened = _open(request, MAX_HOURLY_DAYS if hourly else MAX_DAYS)
    if isinstance(opened, web.Response):
        return opened
    backend, first, last = opened
    if granularity not in ("day", "hour"):
        return error(400, "invalid_field", "granularity: day or hour", field="granularity")
    version = _version(request)
    if isinstance(version, web.Response):
        return version
    rid = request.match_info["rule_id"]
    rule = _rule(backend, rid)
    counts = await _counts(backend, False, first, last, rid, version)
    if rule is None and not counts:
        return error(404, "unknown_rule", f"no rule {rid!r} running or counted", field="rule_id")
    series = counts
    s_first, s_last = first, last
    if hourly:
        s_first, s_last = first * 24, last * 24 + 23
        series = await _counts(backend, True, s_first, s_last, rid, version)
    body = rule_detail(rid, rule, counts, series, hourly, s_first, s_last)
    body["from"], body["to"] = _iso_day(first), _iso_day(last)
    return ok(body)


async def get_experiment(request: web.Request) -> web.Response:
    opened = _open(request)
    if isinstance(opened, web.Response):
        return opened
    backend, first, last = opened
    rid = request.match_info["rule_id"]
    version = _version(request)
    if isinstance(version, web.Response):
        return version
    rule = _rule(backend, rid)
    counts = await _counts(backend, False, first, last, rid, version)
    if rule is None and not counts:
        return error(404, "unknown_rule", f"no rule {rid!r} running or counted", field="rule_id")
    body = experiment(rid, rule, counts)
    body["from"], body["to"] = _iso_day(first), _iso_day(last)
    return ok(body)


def install(app: web.Application) -> None:
    """Add the report routes to ``app``."""
    app.router.add_get("/v1/reports/rules", list_rules)
    app.router.add_get("/v1/reports/rules/{rule_id}", get_rule)
    app.router.add_get("/v1/reports/experiments/{rule_id}", get_experiment)
