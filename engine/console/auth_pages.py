"""Login and logout pages (the session model is engine/console/session.py)."""

from __future__ import annotations

import logging

from aiohttp import web

from engine.console.session import COOKIE, IDLE_S, Session, same_origin
from engine.console.web import CONSOLE, redirect, render
from engine.http.base import TOKENS

__all__ = ["login_form", "login_submit", "logout"]

logger = logging.getLogger(__name__)


async def login_form(request: web.Request) -> web.StreamResponse:
    session = request.app[CONSOLE].sessions.get(request.cookies.get(COOKIE))
    if session is not None:
        return redirect("/ui/")
    return render(request, "login.html", None)


async def login_submit(request: web.Request) -> web.StreamResponse:
    if not same_origin(request):
        return render(request, "login.html", None, 403, failed="Cross-site login refused.")
    form = await request.post()
    token = form.get("token")
    scope = request.app[TOKENS].token_scope(token.strip()) if isinstance(token, str) else None
    if scope is None:
        logger.info("console: failed login from %s", request.remote)
        return render(request, "login.html", None, failed="That token is not valid.")
    session = request.app[CONSOLE].sessions.create(scope)
    logger.info("console: %s login", scope)
    resp = redirect("/ui/")
    _set_cookie(request, resp, session)
    return resp


def _set_cookie(request: web.Request, resp: web.Response, session: Session) -> None:
    resp.set_cookie(
        COOKIE,
        session.sid,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=int(IDLE_S),
    )


async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    request.app[CONSOLE].sessions.drop(session.sid)
    resp = redirect("/ui/login")
    resp.del_cookie(COOKIE, path="/ui")
    return resp
