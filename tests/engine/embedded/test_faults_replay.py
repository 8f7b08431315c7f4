"""`nudge replay` with failures (issue 21): a replay whose requests fail with 5xx now and
then ends in the same customer states as one without, because each customer's events
are sent in the file's order, retries included.

Two real engines (conftest: runtime behind HTTP on loopback) receive the same trace:
one straight, one through a proxy that answers some requests 503 without forwarding them
and some 500 after forwarding them (acknowledged, but the client cannot know: the
retry's events are duplicates the engine drops). The trace's carts are order-sensitive:
cart changes apply in arrival order (docs/semantics.md), so a retried batch sent after a
later one leaves a different cart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from engine.testing import START
from engine.types import iso
from load_tests.replay import ReplayOptions, ReplayStats, _Replayer
from tests.engine.embedded.conftest import Harness, running

CUSTOMERS = 40


def trace(path: Path) -> list[str]:
    """Six cart changes per customer, customers interleaved; returns the customer ids."""
    steps: list[tuple[str, dict[str, Any]]] = [
        ("cart_item_added", {"product_id": "p1", "price": 10.0}),
        ("cart_item_removed", {"product_id": "p1"}),
        ("cart_item_added", {"product_id": "p2", "price": 20.0}),
        ("cart_item_added", {"product_id": "p3", "price": 30.0}),
        ("cart_item_removed", {"product_id": "p2"}),
        ("cart_item_added", {"product_id": "p1", "price": 10.0, "quantity": 2}),
    ]
    cids = [f"shopper-{i}" for i in range(CUSTOMERS)]
    lines = []
    for k, (etype, props) in enumerate(steps):
        for cid in cids:
            event = {
                "event_id": f"{cid}-{k}",
                "type": etype,
                "customer_id": cid,
                "timestamp": iso(START + k * 1000),
                "properties": props,
            }
            lines.append(orjson.dumps(event).decode())
    path.write_text("\n".join(lines) + "\n")
    return cids


class FaultyProxy:
    """Forwards POST /v1/events to ``upstream``; request n (1-based) is answered 503
    unforwarded when n % 3 == 1, 500 after forwarding when n % 5 == 2."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.n = 0
        self.refused = self.lost_answers = 0
        self.session: ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.n += 1
        body = await request.read()
        if self.n % 3 == 1:
            self.refused += 1
            return web.Response(status=503, text="injected")
        assert self.session is not None
        headers = {"Authorization": request.headers["Authorization"]}
        async with self.session.post(self.upstream, data=body, headers=headers) as r:
            status, answer = r.status, await r.read()
        if status == 202 and self.n % 5 == 2:
            self.lost_answers += 1
            return web.Response(status=500, text="injected after forwarding")
        return web.Response(status=status, body=answer, content_type="application/json")


async def replay(path: Path, target: str, token: str) -> ReplayStats:
    stats = ReplayStats()
    opts = ReplayOptions(
        path=path, target=target, token=token, batch=7, concurrency=8, progress=False
    )
    await _Replayer(opts, stats).run()
    return stats


async def carts(h: Harness, cids: list[str]) -> dict[str, Any]:
    out = {}
    for cid in cids:
        async with h.session.get(h.url(f"/v1/customers/{cid}"), headers=h.auth("admin")) as r:
            assert r.status == 200
            view = await r.json()
        out[cid] = view["cart"]
    return out


async def test_replay_with_5xx_ends_in_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    cids = trace(path)
    async with running(tmp_path / "straight") as clean:
        stats = await replay(path, clean.url("/"), clean.tokens.write)
        assert stats.acknowledged == len(cids) * 6
        assert stats.retried == 0
        await clean.settle()
        expected = await carts(clean, cids)
    async with running(tmp_path / "faulty") as h:
        proxy = FaultyProxy(h.url("/v1/events"))
        app = web.Application()
        app.router.add_post("/v1/events", proxy.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        proxy.session = ClientSession()
        try:
            stats = await replay(path, str(server.make_url("/")), h.tokens.write)
        finally:
            await proxy.session.close()
            await server.close()
        assert stats.failed == 0
        assert stats.acknowledged == len(cids) * 6
        assert stats.retried >= proxy.refused + proxy.lost_answers > 10
        await h.settle()
        got = await carts(h, cids)
    assert got == expected
    # the trace is order-sensitive: every cart ends with p3 and two p1, no p2
    assert all(expected[c] != {} for c in cids)
