"""Overview and rule pages (read scope). Numbers come from the report API when it answers
(engine/console/api.py), else from the runtime's counters since its start, and every page
says which."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from engine.console.api import Answer, get_json
from engine.console.sampler import counter_total, labelled
from engine.console.session import Session
from engine.console.web import CONSOLE, render
from engine.http.base import BACKEND, METRICS
from rules.compiler import Branch, CompiledRule, Send, Wait

__all__ = ["flow_steps", "overview", "rule_page", "rules_list"]

REPORT_DAYS = 30
"""The rule list and the overview report the last 30 days (today included)."""


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def flow_steps(rule: CompiledRule) -> list[dict[str, Any]]:
    """The rule's steps as the marketer wrote them, in order: ``{"step", "kind", "label"}``."""
    out: list[dict[str, Any]] = []
    for i, op in enumerate(rule.ops):
        if isinstance(op, Wait):
            if op.ms is not None:
                label = f"wait {_duration(op.ms)}"
            else:
                minute = op.until_minute or 0
                label = f"wait until {minute // 60:02d}:{minute % 60:02d}"
            kind = "wait"
        elif isinstance(op, Send):
            label, kind = f"send {op.channel}: {op.template}", "send"
        elif isinstance(op, Branch):
            label, kind = f"if {op.expr.source}", "if"
        else:  # a Jump: how the flow is wired, not a step
            continue
        name = getattr(op, "name", None)
        out.append({"step": i, "kind": kind, "label": label, "name": name})
    return out


def _today(request: web.Request) -> dt.date:
    now_ms = request.app[BACKEND].clock.now()
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date()


async def rules_report(request: web.Request) -> Answer:
    to = _today(request)
    since = to - dt.timedelta(days=REPORT_DAYS - 1)
    return await get_json(
        request, "/v1/reports/rules", {"from": since.isoformat(), "to": to.isoformat()}
    )


def _by_rule(report: Answer) -> dict[str, dict[str, Any]]:
    if not report.ok or not isinstance(report.body, dict):
        return {}
    return {str(r.get("rule_id")): r for r in report.body.get("rules") or [] if isinstance(r, dict)}


def _fires_since_start(request: web.Request) -> dict[str, dict[str, float]]:
    """rule -> {"sends", "conversions"} from the runtime's counters (since its start)."""
    metrics = request.app[METRICS]
    out: dict[str, dict[str, float]] = {}
    for (rule, _variant, outcome), v in labelled(metrics.rule_fires).items():
        if outcome == "sent":
            out.setdefault(rule, {"sends": 0.0, "conversions": 0.0})["sends"] += v
    for (rule, _variant), v in labelled(metrics.conversions).items():
        out.setdefault(rule, {"sends": 0.0, "conversions": 0.0})["conversions"] += v
    return out


async def overview(request: web.Request, session: Session) -> web.StreamResponse:
    console = request.app[CONSOLE]
    metrics = request.app[METRICS]
    rates = console.sampler.rates_now()
    report = await rules_report(request)
    by_rule = _by_rule(report)
    if by_rule:
        rows = [
            {"rule_id": rid, "sends": r.get("sends", 0), "conversions": r.get("conversions", 0)}
            for rid, r in by_rule.items()
        ]
        source = f"report API, last {REPORT_DAYS} days"
    else:
        rows = [{"rule_id": rid, **v} for rid, v in _fires_since_start(request).items()]
        source = "runtime counters since the last start (no report data yet)"
    top_sends = sorted(rows, key=lambda r: (-r["sends"], r["rule_id"]))[:5]
    top_conv = sorted(rows, key=lambda r: (-r["conversions"], r["rule_id"]))[:5]
    rejected = labelled(metrics.rule_deploys).get(("rejected",), 0.0)
    alerts = [
        {
            "name": "Dead letters",
            "value": counter_total(metrics.dead_letters),
            "help": "actions the sinks refused for good (in the dead-letter store now)",
        },
        {
            "name": "Expression errors",
            "value": counter_total(metrics.expression_errors),
            "help": "rule expressions that failed at run time since the last start",
        },
        {
            "name": "Rejected deploys",
            "value": rejected,
            "help": "rule set deploys refused since the last start",
        },
    ]
    return render(
        request,
        "overview.html",
        session,
        rates=rates,
        series=console.sampler.series(),
        top_sends=top_sends,
        top_conv=top_conv,
        source=source,
        alerts=alerts,
        rules_version=request.app[BACKEND].rules_version,
    )


async def _deployed_at(request: web.Request) -> int | None:
    """When the running rule set was deployed (embedded: from its store), else None."""
    backend = request.app[BACKEND]
    store = getattr(backend, "store", None)
    if store is None or not hasattr(backend, "db"):
        return None
    versions: list[tuple[int, int]] = await backend.db(store.rule_versions)
    for version, created in versions:
        if version == backend.rules_version:
            return created
    return None


async def rules_list(request: web.Request, session: Session) -> web.StreamResponse:
    backend = request.app[BACKEND]
    rs = backend.ruleset
    report = await rules_report(request)
    by_rule = _by_rule(report)
    fires = _fires_since_start(request)
    rows = []
    live = set()
    for r in sorted(rs.rules.values(), key=lambda r: r.sort_key()) if rs else ():
        live.add(r.id)
        rep = by_rule.get(r.id)
        series = [float(d.get("sends", 0)) for d in (rep or {}).get("series") or []]
        rows.append(
            {
                "id": r.id,
                "version": r.version,
                "status": "experiment" if r.variants and len(r.variants) > 1 else "live",
                "trigger": r.trigger,
                "sends": rep.get("sends") if rep else None,
                "conversions": rep.get("conversions") if rep else None,
                "sends_since_start": fires.get(r.id, {}).get("sends", 0.0),
                "spark": series,
            }
        )
    for rid, rep in sorted(by_rule.items()):
        if rid not in live:  # reported but no longer deployed
            series = [float(d.get("sends", 0)) for d in rep.get("series") or []]
            rows.append(
                {
                    "id": rid,
                    "version": rep.get("version"),
                    "status": "retired",
                    "trigger": "",
                    "sends": rep.get("sends"),
                    "conversions": rep.get("conversions"),
                    "sends_since_start": 0.0,
                    "spark": series,
                }
            )
    return render(
        request,
        "rules.html",
        session,
        rows=rows,
        report_ok=report.ok,
        report_status=report.status,
        days=REPORT_DAYS,
        rules_version=backend.rules_version,
        deployed_at=await _deployed_at(request),
    )


def _funnel_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for f in report.get("funnel") or []:
        if not isinstance(f, dict):
            continue
        sent = f.get("sent") or {}
        suppressed = f.get("suppressed") or {}
        rows.append(
            {
                "step": f.get("step"),
                "label": f.get("label") or f"step {f.get('step')}",
                "reached": f.get("reached", 0),
                "sent": sorted(sent.items()),
                "sent_total": sum(sent.values()),
                "suppressed": sorted(suppressed.items()),
            }
        )
    return rows


async def rule_page(request: web.Request, session: Session) -> web.StreamResponse:
    rid = request.match_info["rule_id"]
    backend = request.app[BACKEND]
    rs = backend.ruleset
    rule = rs.rules.get(rid) if rs else None
    report = await get_json(request, f"/v1/reports/rules/{rid}")
    experiment = await get_json(request, f"/v1/reports/experiments/{rid}")
    if rule is None and not report.ok:
        return render(request, "error.html", session, 404, message=f"No rule {rid!r}.")
    body = report.body if report.ok and isinstance(report.body, dict) else None
    funnel = _funnel_rows(body) if body else []
    series = body.get("series") or [] if body else []
    chart = {
        "at": [s.get("at") for s in series],
        "entered": [s.get("entered", 0) for s in series],
        "sends": [s.get("sends", 0) for s in series],
        "conversions": [s.get("conversions", 0) for s in series],
    }
    exp = experiment.body if experiment.ok and isinstance(experiment.body, dict) else None
    return render(
        request,
        "rule.html",
        session,
        rid=rid,
        rule=rule,
        steps=flow_steps(rule) if rule is not None else [],
        report=body,
        report_status=report.status,
        funnel=funnel,
        chart=chart,
        experiment=exp,
        exited=sorted((body.get("exited") or {}).items()) if body else [],
        file=_file_of(backend, rid),
    )


def _file_of(backend: Any, rid: str) -> str | None:
    """The deployed file that defines rule ``rid`` (a line ``id: <rid>``), else None."""
    for name, text in sorted((getattr(backend, "rules_files", None) or {}).items()):
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "id" and value.strip().strip("'\"") == rid:
                return str(name)
    return None
