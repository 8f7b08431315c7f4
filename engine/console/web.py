"""What every console page shares: the app key, templates, the login guard, CSRF checks and
the security headers of every page.

Pages are rendered on the server with Jinja2 (autoescaped) and use a little vanilla JS
(engine/console/static/console.js) only to draw charts with the vendored uPlot; see
docs/console.md for why. No page or asset comes from elsewhere: the Content-Security-Policy
allows this origin only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import orjson
from aiohttp import web
from markupsafe import Markup

from engine.analytics.source import HistorySource
from engine.console.sampler import Sampler
from engine.console.session import COOKIE, WRITE_METHODS, Session, Sessions, same_origin
from engine.types import iso

__all__ = [
    "CONSOLE",
    "Console",
    "Page",
    "guard",
    "redirect",
    "render",
]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make form posts say Origin: null
    "Cache-Control": "no-store",
}


def _when(ms: int | None) -> str:
    return "—" if ms is None else iso(ms)[:19].replace("T", " ") + " UTC"


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.2f}"
    return f"{int(v):,}"


def _json_script(value: Any, element_id: str) -> Markup:
    """``value`` as a JSON data island a script reads (``</`` escaped)."""
    text = orjson.dumps(value).decode().replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(f'<script type="application/json" id="{element_id}">{text}</script>')


def _sparkline(values: list[float], width: int = 120, height: int = 24) -> Markup:
    """A tiny inline SVG line (no script needed), empty when fewer than two points."""
    if len(values) < 2:
        return Markup('<span class="muted">—</span>')
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    pts = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="trend"><polyline points="{pts}"/></svg>'
    )


@dataclass
class Console:
    """The console's state in the app: sessions, the metrics ring, the customer timeline's
    source (None: the runtime keeps no history), the templates."""

    sessions: Sessions
    sampler: Sampler
    history: HistorySource | None = None
    env: jinja2.Environment = field(
        default_factory=lambda: jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
    )

    def __post_init__(self) -> None:
        self.env.filters["when"] = _when
        self.env.filters["num"] = _num
        self.env.globals["json_script"] = _json_script
        self.env.globals["sparkline"] = _sparkline


CONSOLE: web.AppKey[Console] = web.AppKey("nudge_console", Console)

Page = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def _secure(resp: web.StreamResponse) -> web.StreamResponse:
    for k, v in _HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def render(
    request: web.Request,
    template: str,
    session: Session | None,
    status: int = 200,
    **ctx: Any,
) -> web.Response:
    console = request.app[CONSOLE]
    html = console.env.get_template(template).render(session=session, path=request.path, **ctx)
    resp = web.Response(status=status, text=html, content_type="text/html")
    _secure(resp)
    return resp


def redirect(location: str) -> web.Response:
    """A 303 (a returned response: the API's error middleware turns raised ones into JSON)."""
    resp = web.Response(status=303, headers={"Location": location})
    _secure(resp)
    return resp


def guard(scope: str, handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``handler`` behind a console login of ``scope`` (``read``: read or admin;
    ``admin``; ``any``: any login), with the CSRF token and origin checked on writes."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        console = request.app[CONSOLE]
        session = console.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method in WRITE_METHODS:
                return render(request, "error.html", None, 401, message="Please log in again.")
            return redirect("/ui/login")
        allowed = {"admin": session.admin, "read": session.reads}.get(scope, True)
        if not allowed:
            need = "an admin" if scope == "admin" else "a read or admin"
            return render(
                request,
                "error.html",
                session,
                403,
                message=f"This page needs {need} token; you are logged in with a "
                f"{session.scope} token.",
            )
        if request.method in WRITE_METHODS:
            sent = request.headers.get("X-CSRF-Token")
            if sent is None:
                form = await request.post()
                value = form.get("csrf")
                sent = value if isinstance(value, str) else None
            if not same_origin(request) or not Sessions.csrf_ok(session, sent):
                logger.warning("console: CSRF check failed on %s", request.path)
                return render(
                    request, "error.html", session, 403, message="The form expired; reload it."
                )
        resp = await handler(request, session)
        return _secure(resp)

    return wrapped
