"""Edit, check, preview and deploy rule files (admin).

The form edits one file of the running rule set; the set with that file replaced goes
through the same backend calls as the API (``load_texts`` as ``POST /v1/rules/validate``,
``backend.deploy`` and the deploy counter as ``PUT /v1/rules``). Errors are shown at their
file, line and column on a listing of the file. The preview runs the candidate set and the
running one over the same events with :func:`engine.backtest.backtest`: the last N events
of the embedded runtime's journal (the console's history source when it offers
``RecentEvents``: engine/embedded/history.py), or an uploaded JSONL trace (the distributed
ingest keeps no journal). It starts from empty customer state, so it is a
preview of what the rules do on those events, not a replay of production.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from aiohttp import web

from engine.analytics.source import RecentEvents
from engine.backtest import BacktestResult, backtest
from engine.console.session import Session
from engine.console.web import CONSOLE, redirect, render
from engine.http.base import BACKEND, METRICS
from rules.exceptions import RuleError, RuleErrors
from rules.ruleset import RuleSet, load_texts

__all__ = ["MAX_PREVIEW_EVENTS", "edit_form", "submit"]

logger = logging.getLogger(__name__)

DEFAULT_PREVIEW_EVENTS = 10_000
MAX_PREVIEW_EVENTS = 100_000


def _files(backend: Any) -> dict[str, str]:
    return dict(getattr(backend, "rules_files", None) or {})


async def edit_form(request: web.Request, session: Session) -> web.StreamResponse:
    backend = request.app[BACKEND]
    files = _files(backend)
    name = request.query.get("file") or (sorted(files)[0] if files else "new-rule.yaml")
    return _page(request, session, files, name, files.get(name, ""))


def _page(
    request: web.Request,
    session: Session,
    files: dict[str, str],
    name: str,
    text: str,
    status: int = 200,
    **extra: Any,
) -> web.Response:
    ctx: dict[str, Any] = {
        "errors": [],
        "listing": [],
        "other_errors": [],
        "valid": None,
        "preview": None,
        "deployed": None,
        "preview_source": None,
        "checked_rules": [],
    }
    ctx.update(extra)
    return render(
        request,
        "editor.html",
        session,
        status,
        names=sorted(set(files) | {name}),
        name=name,
        text=text,
        journal=isinstance(request.app[CONSOLE].history, RecentEvents),
        default_events=DEFAULT_PREVIEW_EVENTS,
        max_events=MAX_PREVIEW_EVENTS,
        **ctx,
    )


def _listing(text: str, errors: list[RuleError]) -> list[dict[str, Any]]:
    """The file's lines, each with the errors at it (``column`` 1-based)."""
    at: dict[int, list[RuleError]] = {}
    for e in errors:
        at.setdefault(e.line, []).append(e)
    lines = text.splitlines() or [""]
    return [
        {
            "n": n,
            "text": line,
            "errors": [{"column": e.column, "message": e.message} for e in at.get(n, [])],
        }
        for n, line in enumerate(lines, 1)
    ]


def _summary(result: BacktestResult) -> dict[str, Any]:
    by_rule = Counter(a.rule_id for a in result.actions)
    by_channel = Counter(a.channel for a in result.actions)
    return {
        "actions": len(result.actions),
        "by_rule": dict(by_rule),
        "by_channel": sorted(by_channel.items()),
        "errors": sum(result.errors.values()),
    }


def _preview(new: RuleSet, old: RuleSet | None, lines: list[bytes]) -> dict[str, Any]:
    """Both rule sets over the same events (blocking: run it in a thread)."""
    got = backtest(new, lines)
    base = backtest(old, lines) if old is not None else BacktestResult()
    a, b = _summary(got), _summary(base)
    rules = sorted(set(a["by_rule"]) | set(b["by_rule"]) | set(new.rules))
    return {
        "events": got.events,
        "rejected": len(got.rejected),
        "actions": a["actions"],
        "running_actions": b["actions"],
        "by_channel": a["by_channel"],
        "expression_errors": a["errors"],
        "rules": [
            {"rule_id": r, "new": a["by_rule"].get(r, 0), "running": b["by_rule"].get(r, 0)}
            for r in rules
        ],
    }


async def _preview_lines(request: web.Request, form: Any) -> tuple[list[bytes], str] | str:
    """The events to preview on and where they came from, or why there are none."""
    upload = form.get("trace")
    if isinstance(upload, web.FileField):
        data = upload.file.read()
        if data.strip():
            return data.splitlines(), f"the uploaded trace {upload.filename!r}"
    journal: object = request.app[CONSOLE].history  # a timeline source; a journal too?
    if not isinstance(journal, RecentEvents):
        return "This runtime keeps no journal of recent events: upload a JSONL trace."
    try:
        n = int(str(form.get("events") or DEFAULT_PREVIEW_EVENTS))
    except ValueError:
        n = DEFAULT_PREVIEW_EVENTS
    n = max(1, min(n, MAX_PREVIEW_EVENTS))
    lines = await journal.recent_events(n)
    if not lines:
        return "The journal holds no events yet: upload a JSONL trace."
    return lines, f"the last {len(lines):,} events accepted"


async def submit(request: web.Request, session: Session) -> web.StreamResponse:
    """``action``: ``check``, ``preview`` or ``deploy`` the rule set with ``file``
    replaced by ``text``."""
    backend = request.app[BACKEND]
    form = await request.post()
    name = str(form.get("file") or "").strip()
    text = str(form.get("text") or "").replace("\r\n", "\n")
    action = str(form.get("action") or "check")
    files = _files(backend)
    if not name:
        return _page(request, session, files, "new-rule.yaml", text, 200, valid=False,
                     other_errors=[{"file": "", "line": 0, "column": 0,
                                    "message": "name the file"}])  # fmt: skip
    if not text.strip():
        files.pop(name, None)  # an emptied file is removed from the set
    else:
        files[name] = text
    try:
        rs = await asyncio.to_thread(load_texts, sorted(files.items()))
    except RuleErrors as err:
        if action == "deploy":
            request.app[METRICS].rule_deploys.labels("rejected").inc()
        mine = [e for e in err.errors if e.path == name]
        others = [e.to_dict() for e in err.errors if e.path != name]
        return _page(
            request,
            session,
            files,
            name,
            text,
            200,
            valid=False,
            errors=[e.to_dict() for e in mine],
            listing=_listing(text, mine),
            other_errors=others,
        )
    if action == "deploy":
        try:
            version = await backend.deploy(files)
        except RuleErrors as err:  # e.g. a sink needs an address the rules do not give
            request.app[METRICS].rule_deploys.labels("rejected").inc()
            return _page(request, session, files, name, text, 200, valid=False,
                         other_errors=[e.to_dict() for e in err.errors])  # fmt: skip
        request.app[METRICS].rule_deploys.labels("ok").inc()
        logger.info("console: rule set v%d deployed (%s)", version, name)
        return redirect(f"/ui/rules?deployed={version}")
    preview = None
    source = None
    if action == "preview":
        got = await _preview_lines(request, form)
        if isinstance(got, str):
            source = got
        else:
            lines, source = got
            preview = await asyncio.to_thread(_preview, rs, backend.ruleset, lines)
    return _page(
        request,
        session,
        files,
        name,
        text,
        valid=True,
        listing=[],
        preview=preview,
        preview_source=source,
        checked_rules=sorted(rs.rules),
    )
