"""The marketer's console at ``/ui``, served by the same aiohttp app as the API on both
runtimes (``nudge run`` and the distributed ingest): overview, rules (flow, funnel,
experiment, edit and deploy), segments, customer lookup. docs/console.md describes the
pages, the login and what each number is.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from engine.analytics.source import HistorySource, history_of
from engine.console import auth_pages, editor, pages, people
from engine.console.sampler import Sampler
from engine.console.session import Sessions
from engine.console.web import CONSOLE, STATIC, Console, guard, redirect
from engine.http.base import BACKEND, METRICS

__all__ = ["STATIC", "install"]


async def _root(request: web.Request) -> web.StreamResponse:
    return redirect("/ui/")


def install(
    app: web.Application,
    *,
    sample_every_s: float = 10.0,
    history: HistorySource | None = None,
) -> None:
    """Add the console's routes to ``app`` (after ``BACKEND`` and ``METRICS`` are set).
    ``history``: the customer timeline's source (and the rule preview's if it offers
    ``RecentEvents``); None: the backend's own if it serves one (the distributed ingest)."""
    backend = app[BACKEND]
    sampler = Sampler(app[METRICS], backend, every_s=sample_every_s)
    app[CONSOLE] = Console(
        Sessions(), sampler, history if history is not None else history_of(backend)
    )
    app.cleanup_ctx.append(sampler.cleanup_ctx)
    r = app.router
    r.add_get("/ui", _root)
    r.add_get("/ui/login", auth_pages.login_form)
    r.add_post("/ui/login", auth_pages.login_submit)
    r.add_post("/ui/logout", guard("any", auth_pages.logout))
    r.add_get("/ui/", guard("read", pages.overview))
    r.add_get("/ui/rules", guard("read", pages.rules_list))
    r.add_get("/ui/rules/edit", guard("admin", editor.edit_form))
    r.add_post("/ui/rules/deploy", guard("admin", editor.submit))
    r.add_get("/ui/rules/{rule_id}", guard("read", pages.rule_page))
    r.add_get("/ui/segments", guard("read", people.segments))
    r.add_get("/ui/segments/{segment_id}/members.{fmt}", guard("read", people.export))
    r.add_get("/ui/segments/{segment_id}", guard("read", people.members))
    r.add_get("/ui/customers", guard("read", people.customer_form))
    r.add_get("/ui/customers/{customer_id}", guard("read", people.customer_page))
    r.add_static("/ui/static/", Path(STATIC), append_version=False)
