"""Console login, sessions, scopes and CSRF over plain HTTP (no browser)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar

from engine.console.session import IDLE_S, Sessions
from tests.engine.embedded.conftest import Harness, running

GOOD = (
    "id: csrf-probe\ntrigger: {event: page_viewed}\n"
    "steps:\n  - send: {channel: email, template: t}\n"
)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path / "data") as harness:
        yield harness


async def _login(h: Harness, token: str) -> ClientSession:
    """A fresh cookie jar (``unsafe``: cookies for an IP host) logged in with ``token``."""
    s = ClientSession(cookie_jar=CookieJar(unsafe=True))
    async with s.post(h.url("/ui/login"), data={"token": token}, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
        assert r.headers["Location"] == "/ui/"
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert token not in cookie  # the cookie holds a session id, never the token
    return s


async def _csrf(s: ClientSession, h: Harness) -> str:
    async with s.get(h.url("/ui/rules/edit")) as r:
        assert r.status == 200
        m = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert m is not None
    return m.group(1)


async def _deploy(
    s: ClientSession, h: Harness, csrf: str | None = None, origin: str | None = None
) -> int:
    form = {"file": "probe.yaml", "text": GOOD, "action": "deploy"}
    if csrf is not None:
        form["csrf"] = csrf
    headers = {"Origin": origin} if origin is not None else {}
    async with s.post(
        h.url("/ui/rules/deploy"), data=form, headers=headers, allow_redirects=False
    ) as r:
        return r.status


async def test_pages_need_a_login_and_a_good_token(h: Harness) -> None:
    async with ClientSession() as s:
        async with s.get(h.url("/ui/rules"), allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/ui/login"
        async with s.post(h.url("/ui/login"), data={"token": "nope"}) as r:
            assert "That token is not valid." in await r.text()
            assert "Set-Cookie" not in r.headers
        async with s.get(h.url("/ui/login")) as r:
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert r.headers["X-Frame-Options"] == "DENY"


async def test_csrf_origin_and_scope_guard_every_write(h: Harness) -> None:
    admin = await _login(h, h.tokens.admin)
    try:
        version = h.runtime.rules_version
        assert await _deploy(admin, h) == 403  # no CSRF token
        assert await _deploy(admin, h, csrf="forged") == 403
        token = await _csrf(admin, h)
        assert await _deploy(admin, h, csrf=token, origin="http://evil.example") == 403
        assert h.runtime.rules_version == version  # nothing deployed by any of them
        assert await _deploy(admin, h, csrf=token) == 303
        assert h.runtime.rules_version == version + 1
        assert "csrf-probe" in h.runtime.ruleset.rules
    finally:
        await admin.close()

    read = await _login(h, h.tokens.read)
    try:
        async with read.get(h.url("/ui/rules/edit")) as r:
            assert r.status == 403  # editing needs admin
        async with read.get(h.url("/ui/rules")) as r:
            assert r.status == 200
        async with read.post(h.url("/ui/logout"), allow_redirects=False) as r:
            assert r.status == 403  # logout is a write too: CSRF token needed
    finally:
        await read.close()

    write = await _login(h, h.tokens.write)
    try:
        async with write.get(h.url("/ui/rules")) as r:
            assert r.status == 403  # an ingest key reads nothing
    finally:
        await write.close()


async def test_logout_ends_the_session(h: Harness) -> None:
    s = await _login(h, h.tokens.read)
    try:
        async with s.get(h.url("/ui/customers")) as r:
            m = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert m is not None
        async with s.post(
            h.url("/ui/logout"), data={"csrf": m.group(1)}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with s.get(h.url("/ui/rules"), allow_redirects=False) as r:
            assert r.status == 303  # back to the login page
    finally:
        await s.close()


def test_sessions_expire_when_idle() -> None:
    t = [0.0]
    sessions = Sessions(now=lambda: t[0])
    s = sessions.create("read")
    t[0] = IDLE_S - 1
    assert sessions.get(s.sid) is s  # used: the idle timer starts again
    t[0] += IDLE_S - 1
    assert sessions.get(s.sid) is s
    t[0] += IDLE_S + 1
    assert sessions.get(s.sid) is None
    assert len(sessions) == 0
    assert not Sessions.csrf_ok(sessions.create("admin"), "")
