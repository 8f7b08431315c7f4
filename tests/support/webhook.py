"""A real HTTP webhook receiver for tests: records every delivery (body and headers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Delivery", "WebhookReceiver"]


@dataclass
class Delivery:
    key: str
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Answers 200 to every POST /hook (``fail_next`` answers 500 that many times)."""

    deliveries: list[Delivery] = field(default_factory=list)
    fail_next: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500)
        self.deliveries.append(Delivery(request.headers.get("Idempotency-Key", ""), body))
        return web.Response(status=200)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until at least ``n`` deliveries arrived (polling; fails on timeout)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.deliveries) < n:
            if loop.time() > end:
                raise AssertionError(f"{len(self.deliveries)} deliveries, expected {n}")
            await asyncio.sleep(0.01)
        return self.deliveries

    def keys(self) -> list[str]:
        return [d.key for d in self.deliveries]
