"""Console logins: a token exchanged for a server-side session, and CSRF protection.

A login posts a token (read, write or admin: ``Tokens.token_scope``) in the request body;
the answer sets a cookie holding a random session id, never the token (HttpOnly,
SameSite=Strict, Path=/ui, Secure when the request came over TLS). The session maps to the
token's scope and a per-session CSRF token; every POST, PUT or DELETE under /ui but the
login itself must carry that CSRF token (form field ``csrf`` or header ``X-CSRF-Token``)
and, when the browser sends an ``Origin``, come from the console's own origin. Sessions
live in the process (a restart logs everyone out) and expire after ``IDLE_S`` without use
or ``MAX_AGE_S`` after login, whichever comes first.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

__all__ = ["COOKIE", "IDLE_S", "MAX_AGE_S", "Session", "Sessions", "same_origin"]

COOKIE = "nudge_console"
IDLE_S = 8 * 3600.0
MAX_AGE_S = 24 * 3600.0
MAX_SESSIONS = 10_000
"""Most sessions kept; the least recently used goes first."""

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Session:
    sid: str
    scope: str  # read, write or admin
    csrf: str
    created: float
    used: float

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    @property
    def reads(self) -> bool:
        """Whether the scope may read the console's pages (read or admin)."""
        return self.scope in ("read", "admin")


class Sessions:
    """Session id -> :class:`Session`, in memory. ``now``: seconds (injected by tests)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self, scope: str) -> Session:
        t = self._now()
        s = Session(secrets.token_urlsafe(32), scope, secrets.token_urlsafe(32), t, t)
        self._by_id[s.sid] = s
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (its idle timer restarted), else None."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        t = self._now()
        if t - s.used > IDLE_S or t - s.created > MAX_AGE_S:
            del self._by_id[sid]
            return None
        s.used = t
        self._by_id.move_to_end(sid)
        return s

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf, sent or "")


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request came from another origin (``Origin``
    header, sent on every cross-site POST); True when it matches or is absent."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin == f"{request.scheme}://{request.host}"
