"""The console reads the JSON API in-process: a GET dispatched through the app's own
router to the API handler, with the console's read credentials, no HTTP to itself.

The report API (engine/http/reports.py) is another module's; the console knows it only by
its JSON contract (docs/console.md). Until a route exists, the router answers 404 and the
pages say "no report data yet". Segment exports are streamed by the API's own handler on
the browser's connection (:func:`stream`), so a CSV download is the API's byte for byte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from engine.http.base import TOKENS

__all__ = ["Answer", "get_json", "stream"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """An API answer: ``status`` and the decoded body (None when there is none)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body is not None

    @property
    def missing(self) -> bool:
        """The route does not exist (yet) or has nothing for this id."""
        return self.status == 404


async def _as_api(
    request: web.Request, path: str, query: dict[str, str] | None
) -> tuple[web.Request, web.UrlMappingMatchInfo]:
    app = request.app
    tokens = app[TOKENS]
    token = tokens.read or tokens.admin  # the console checked the session's scope first
    url = URL.build(path=path, query=query or {})
    headers = CIMultiDict({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    sub = request.clone(method="GET", rel_url=url, headers=headers)
    match = await app.router.resolve(sub)
    match.add_app(app)
    match.freeze()
    sub._match_info = match  # what aiohttp's own dispatch sets before calling the handler
    return sub, match


async def get_json(request: web.Request, path: str, query: dict[str, str] | None = None) -> Answer:
    """GET ``path`` of this app; 404 when no route matches."""
    sub, match = await _as_api(request, path, query)
    if match.http_exception is not None:
        return Answer(match.http_exception.status, None)
    try:
        resp = await match.handler(sub)
    except web.HTTPException as exc:
        return Answer(exc.status, None)
    except Exception:
        logger.exception("console: GET %s failed", path)
        return Answer(500, None)
    body = resp.body if isinstance(resp, web.Response) else None
    if not isinstance(body, bytes):
        return Answer(resp.status, None)
    try:
        return Answer(resp.status, orjson.loads(body))
    except orjson.JSONDecodeError:
        return Answer(resp.status, None)


async def stream(request: web.Request, path: str) -> web.StreamResponse | None:
    """Answer ``request`` with the API's answer for GET ``path`` (streamed on the
    browser's connection); None when no route matches."""
    sub, match = await _as_api(request, path, None)
    if match.http_exception is not None:
        return None
    return await match.handler(sub)
