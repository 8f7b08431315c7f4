"""Segments and customer lookup pages (read scope).

Segments read the backend's segment index like ``GET /v1/segments`` (engine/http/
segments.py); exports are that API's own streams. The customer page is
``GET /v1/customers/{id}``'s view (engine/customer_view.py) plus the population's scores and
a timeline assembled from what the runtime keeps (the app's ``HistorySource``,
engine/analytics/source.py: ``nudge run``'s journal and outbox, engine/embedded/history.py;
the distributed ingest's topic tails, engine/distributed/history.py): no store keeps a
customer's whole history, and the page says what the timeline covers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from engine.analytics.source import CustomerHistory
from engine.console import api
from engine.console.session import Session
from engine.console.web import CONSOLE, redirect, render
from engine.customer_view import customer_json
from engine.exceptions import NotReady
from engine.http.base import BACKEND
from engine.http.segments import segment_rows
from engine.types import iso

__all__ = ["TIMELINE_SCAN", "customer_form", "customer_page", "export", "members", "segments"]

TIMELINE_SCAN = 50_000
"""Events of the journal (the distributed runtime: records of each of the customer's topic
partitions), newest first, searched for a customer's timeline."""
MEMBERS_PAGE = 50


def _not_served(request: web.Request, session: Session, what: str) -> web.Response:
    return render(request, "error.html", session, 501,
                  message=f"This runtime does not serve {what}.")  # fmt: skip


async def segments(request: web.Request, session: Session) -> web.StreamResponse:
    backend = request.app[BACKEND]
    index = getattr(backend, "segment_index", None)
    rs = backend.ruleset
    sampler = request.app[CONSOLE].sampler
    rows = []
    if index is not None:
        rows = segment_rows(index, rs, backend.clock.now())
        for row in rows:
            row["history"] = [float(v) for v in sampler.segment_history(row["id"])]
    return render(request, "segments.html", session, rows=rows, served=index is not None)


def _segment_known(request: web.Request, sid: str) -> bool:
    rs = request.app[BACKEND].ruleset
    return rs is not None and sid in {seg.id for seg in rs.segments}


async def members(request: web.Request, session: Session) -> web.StreamResponse:
    backend = request.app[BACKEND]
    sid = request.match_info["segment_id"]
    index = getattr(backend, "segment_index", None)
    if index is None:
        return _not_served(request, session, "segment membership")
    if not _segment_known(request, sid):
        return render(request, "error.html", session, 404, message=f"No segment {sid!r}.")
    cursor = request.query.get("after") or None
    page = index.page(sid, cursor, MEMBERS_PAGE)
    rows = [{"customer_id": cid, "since": iso(at)} for cid, at in page]
    nxt = page[-1][0] if len(page) == MEMBERS_PAGE else None
    return render(
        request,
        "members.html",
        session,
        sid=sid,
        rows=rows,
        next_cursor=nxt,
        size=index.size(sid),
    )


async def export(request: web.Request, session: Session) -> web.StreamResponse:
    sid = request.match_info["segment_id"]
    fmt = request.match_info["fmt"]
    if fmt not in ("csv", "ndjson") or not _segment_known(request, sid):
        return render(request, "error.html", session, 404, message="No such export.")
    resp = await api.stream(request, f"/v1/segments/{sid}/members.{fmt}")
    if resp is None:
        return _not_served(request, session, "segment exports")
    return resp


async def customer_form(request: web.Request, session: Session) -> web.StreamResponse:
    cid = request.query.get("id", "").strip()
    if cid:
        return redirect(f"/ui/customers/{_quote(cid)}")
    return render(request, "customer_search.html", session)


def _quote(cid: str) -> str:
    from urllib.parse import quote

    return quote(cid, safe="")


async def customer_page(request: web.Request, session: Session) -> web.StreamResponse:
    backend = request.app[BACKEND]
    cid = request.match_info["customer_id"]
    if not hasattr(backend, "partition"):
        if hasattr(backend, "customer"):  # the distributed ingest: ask the owning worker
            return await _remote_customer(request, session, backend, cid)
        return _not_served(request, session, "customer lookups (the embedded runtime does)")
    st = backend.partition(cid).store.get(cid)
    if st is None:
        return render(request, "customer_search.html", session, missing=cid)
    now = backend.clock.now()
    view = customer_json(st, backend.ruleset, now)
    population = getattr(getattr(backend, "models", None), "population", None)
    rfm = population.rfm_of(st, now) if population is not None else None
    predicted = population.predicted_of(st, now) if population is not None else None
    source = request.app[CONSOLE].history
    history = CustomerHistory(covers="This runtime keeps no journal here: only the open flows "
                              "are shown.")  # fmt: skip
    if source is not None:
        history = await source.customer_history(cid, TIMELINE_SCAN)
    return render(
        request,
        "customer.html",
        session,
        c=view,
        rfm=rfm,
        predicted=predicted,
        segments=sorted((st.segments or {}).items()),
        timeline=_timeline(view, history.events, history.actions),
        covers=history.covers,
    )


def _norm(ts: str) -> str:
    """An event's RFC 3339 timestamp as ``iso`` writes them (so the timeline sorts)."""
    try:
        t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return iso(int(t.timestamp() * 1000))


def _timeline(
    view: dict[str, Any], events: list[dict[str, Any]], actions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Events, actions and the flow starts the state records, newest first."""
    items: list[dict[str, Any]] = []
    for e in events:
        items.append({"at": _norm(e["timestamp"]), "kind": "event", "what": e["type"],
                      "detail": ""})  # fmt: skip
    for a in actions:
        at = iso(a["fire_at"]) if isinstance(a["fire_at"], int) else str(a["fire_at"])
        items.append(
            {
                "at": at,
                "kind": "action",
                "what": f"{a['channel']}: {a['template']}",
                "detail": f"{a['rule_id']} / {a['variant']} ({a['status']})",
            }
        )
    for f in view["flows"]:
        items.append(
            {
                "at": f["started_at"],
                "kind": "flow",
                "what": f"entered {f['rule_id']}",
                "detail": f"variant {f['variant']}, at step {f['step']}",
            }
        )
    items.sort(key=lambda i: str(i["at"] or ""), reverse=True)
    return items


async def _remote_customer(
    request: web.Request, session: Session, backend: Any, cid: str
) -> web.StreamResponse:
    """The distributed ingest's lookup: the owning worker's read of the customer
    (engine/distributed/requests.py), the same view as ``GET /v1/customers/{id}``, and
    its events and actions from the ingest's history source (the topics' tails, with
    the delivery statuses in Redis), or the open flows alone without one."""
    try:
        status, view = await backend.customer(cid)
    except NotReady as err:
        return render(request, "error.html", session, 503, message=f"Try again: {err}.")
    if status == 404:
        return render(request, "customer_search.html", session, missing=cid)
    if status != 200:
        return render(request, "error.html", session, status, message="Lookup failed.")
    source = request.app[CONSOLE].history
    history = CustomerHistory(covers="This runtime serves no history: only the open flows "
                              "are shown.")  # fmt: skip
    if source is not None:
        try:
            history = await source.customer_history(cid, TIMELINE_SCAN)
        except NotReady as err:
            history.covers = f"The history is not available now ({err}): only the open flows."
    return render(
        request,
        "customer.html",
        session,
        c=view,
        rfm=None,
        predicted=None,
        segments=[],
        timeline=_timeline(view, history.events, history.actions),
        covers=history.covers,
    )
