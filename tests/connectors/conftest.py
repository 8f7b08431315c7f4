"""Fixtures for connector tests: action factory, a recording fake sleep, and a real aiohttp
webhook receiver on loopback whose replies are scripted per test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.types import Action

ActionFactory = Callable[..., Action]


@pytest.fixture
def make_action() -> ActionFactory:
    """``make_action(key="k1", **overrides) -> Action``."""

    def make(key: str = "k1", **overrides: Any) -> Action:
        fields: dict[str, Any] = {
            "rule_id": "abandoned-cart",
            "rule_version": 3,
            "customer_id": "c1",
            "channel": "email",
            "template": "cart_reminder",
            "params": {"code": "SAVE10", "items": [{"sku": "p1", "price": 30.5}]},
            "variant": "default",
            "idempotency_key": key,
            "fire_at": 1_700_000_000_123,
        }
        fields.update(overrides)
        return Action(**fields)

    return make


class FakeSleep:
    """Records the delays ``deliver`` asks for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float, /) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


@dataclass
class Reply:
    """One scripted answer: status, headers, and how long to stall before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0


@dataclass
class Seen:
    headers: dict[str, str]
    body: Any


class Receiver:
    """A real HTTP endpoint (``url``) that answers with ``script`` in order, then 200s."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[Seen] = []
        self.release = asyncio.Event()  # set at teardown: stalled handlers return
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Seen(dict(request.headers), orjson.loads(body)))
        reply = self.script.pop(0) if self.script else Reply()
        if reply.stall:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), reply.stall)
        text = "ok" if reply.status < 300 else f"status {reply.status}"
        return web.Response(status=reply.status, headers=reply.headers, text=text)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    recv.url = str(server.make_url("/hook"))
    try:
        yield recv
    finally:
        recv.release.set()
        await server.close()
