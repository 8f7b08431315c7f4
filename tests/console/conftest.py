"""The console in a real headless Chromium (Debian's /usr/bin/chromium, installed by
deploy/scripts/install-chromium.sh), driven by Playwright's sync API.

The embedded runtime and its HTTP app run on an event loop in a thread of their own (the
harness of tests/engine/embedded), so the browser, driven from the test's thread, never
blocks the server. One browser per module (they are all in
test_browser.py); a fresh context (cookies, storage) per test.
Every page is watched: a console error or an uncaught exception fails the test.
Screenshots go to ``$NUDGE_SCREENSHOTS`` (default: the test's tmp_path); with
``NUDGE_CONSOLE_DOCS=1`` a few are also written to docs/console/ for the README.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from tests.engine.embedded.conftest import Harness, running

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"


class ServerThread:
    """``running(data_dir)`` on a loop in a thread; :meth:`call` runs a coroutine there."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready: Future[Harness] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, args=(data_dir,), daemon=True)
        self._thread.start()
        self.h = self._ready.result(timeout=60)

    def _main(self, data_dir: Path) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve(data_dir))
        self.loop.close()

    async def _serve(self, data_dir: Path) -> None:
        self._stop = asyncio.Event()
        try:
            async with running(data_dir) as h:
                self._ready.set_result(h)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        stop = self._stop
        assert stop is not None
        self.loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    s = ServerThread(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the browser tests (all in one module). Module, not session, scope:
    sync Playwright keeps an event loop running on the main thread while it lives, and
    the asyncio tests of later modules could not start theirs."""
    assert Path(CHROMIUM).exists(), "run deploy/scripts/install-chromium.sh"
    with sync_playwright() as pw:
        # launch() gives every browser a fresh temporary profile (user data dir)
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Watched:
    """A page whose console errors and uncaught exceptions are recorded."""

    page: Page
    shots: Path
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str, docs: bool = False) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if docs and os.environ.get("NUDGE_CONSOLE_DOCS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / f"{name}.png")
        return path


@pytest.fixture
def shots_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    base = os.environ.get("NUDGE_SCREENSHOTS")
    d = Path(base) / request.node.name if base else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def watched(browser: Browser, shots_dir: Path) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    w = Watched(page, shots_dir)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            w.errors.append(f"{page.url}: console error: {msg.text}")

    def on_error(err: Error) -> None:
        w.errors.append(f"{page.url}: uncaught: {err}")

    page.on("console", on_console)
    page.on("pageerror", on_error)
    try:
        yield w
        assert w.errors == [], "\n".join(w.errors)
    finally:
        context.close()


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="nudge-console-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
