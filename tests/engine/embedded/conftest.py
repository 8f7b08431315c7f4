"""A running embedded runtime behind real HTTP on loopback, with a webhook receiver."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from connectors.sources.config import SourcesConfig
from engine.clock import VirtualClock
from engine.embedded.history import JournalHistory
from engine.embedded.runtime import Runtime, RuntimeConfig
from engine.embedded.storage.addresses import SqliteAddressBook
from engine.http.app import create_app
from engine.http.auth import Tokens
from engine.metrics import Metrics
from engine.testing import START
from engine.types import iso
from state.customer import load
from tests.support.webhook import WebhookReceiver


@dataclass
class Harness:
    runtime: Runtime
    server: TestServer
    session: ClientSession
    hook: WebhookReceiver
    clock: VirtualClock
    tokens: Tokens
    data: Path

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def auth(self, scope: str = "write") -> dict[str, str]:
        token = {"admin": self.tokens.admin, "read": self.tokens.read}.get(scope, self.tokens.write)
        return {"Authorization": f"Bearer {token}"}

    async def post_events(self, body: Any, scope: str = "write") -> tuple[int, Any]:
        import orjson

        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(
            self.url("/v1/events"), data=data, headers=self.auth(scope)
        ) as r:
            return r.status, await r.json()

    async def settle(self) -> None:
        """Wait until the runtime processed everything accepted and flushed its outbox."""
        import asyncio

        for _ in range(500):
            if self.runtime.queued == 0 and self.runtime.outbox.pending == 0:
                await asyncio.sleep(0.02)
                if self.runtime.queued == 0 and self.runtime.outbox.pending == 0:
                    return
            await asyncio.sleep(0.01)
        raise AssertionError("runtime did not settle")


def product_views(n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` product_viewed events at START, one per customer ``{prefix}c{i}``."""
    return [
        {
            "event_id": f"{prefix}{i}",
            "type": "product_viewed",
            "customer_id": f"{prefix}c{i}",
            "timestamp": iso(START),
            "properties": {"product_id": "p1"},
        }
        for i in range(n)
    ]


def webhook_sinks(url: str) -> dict[str, Any]:
    return {"default": "hook", "sinks": {"hook": {"type": "webhook", "url": url}}}


@pytest.fixture
def checkpoint_mode() -> str:
    """The harness runtime's periodic checkpoints (a test module overrides it)."""
    return "paced"


@pytest.fixture
def checkpoint_interval() -> float:
    return 0.2


@contextlib.asynccontextmanager
async def running(
    data_dir: Path,
    *,
    sinks: Callable[[str], dict[str, Any]] = webhook_sinks,
    sources: SourcesConfig | None = None,
    checkpoint_mode: str = "paced",
    checkpoint_interval: float = 0.2,
) -> AsyncIterator[Harness]:
    """A started runtime in ``data_dir`` on a virtual clock at START behind the HTTP API
    on loopback, a SQLite address book, and a webhook receiver; ``sinks(hook_url)`` is
    its sinks config, ``sources`` its provider secrets (none: every webhook disabled)."""
    hook = WebhookReceiver()
    await hook.start()
    clock = VirtualClock(START)
    metrics = Metrics()
    cfg = RuntimeConfig(
        data_dir=data_dir,
        sinks=sinks(hook.url),
        checkpoint_interval=checkpoint_interval,
        synchronous="NORMAL",
        checkpoint_mode=checkpoint_mode,
    )
    runtime = Runtime(cfg, metrics, clock)
    await runtime.start()
    tokens, _, _ = Tokens.load_or_create(cfg.data_dir)
    book = SqliteAddressBook(cfg.data_dir / "addresses.db")
    app: web.Application = create_app(
        runtime,
        tokens,
        metrics,
        sources=sources or SourcesConfig(),
        address_book=book,
        history=JournalHistory(cfg.data_dir),  # as nudge run's server passes it
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = ClientSession()
    try:
        yield Harness(runtime, server, session, hook, clock, tokens, cfg.data_dir)
    finally:
        await session.close()
        await server.close()
        if runtime.ready:
            await runtime.stop()
        book.close()
        await hook.stop()


@pytest.fixture
async def harness(
    tmp_path: Path, checkpoint_mode: str, checkpoint_interval: float
) -> AsyncIterator[Harness]:
    async with running(
        tmp_path / "data", checkpoint_mode=checkpoint_mode, checkpoint_interval=checkpoint_interval
    ) as h:
        yield h


def stored(data: Path) -> tuple[dict[str, int], dict[int, int]]:
    """customer id -> stored seq, partition -> stored replay position"""
    db = sqlite3.connect(data / "states.db")
    try:
        states = {
            str(r[0]): load(r[1]).seq for r in db.execute("SELECT customer_id, body FROM states")
        }
        seqs = {
            int(k.split(":")[1]): int(v)
            for k, v in db.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint_seq:%'")
        }
    finally:
        db.close()
    return states, seqs
