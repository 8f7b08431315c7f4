"""Segments on `nudge worker`: memberships go to the compacted `<app id>-segments` topic,
the ingest (`--http-port`) serves `GET /v1/segments`, pages and exports from it, the
workers backfill a hot-deployed segment, and the same events through `nudge run` (the
embedded runtime, in-process) give the same segment sizes and member ids."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from engine.cli import main
from engine.distributed.batching import Stamped
from engine.distributed.models import CLV
from engine.distributed.rules import publish_rules_async
from engine.distributed.segments import SegmentFeed, segment_records
from engine.distributed.storage.redis import RedisState
from engine.intelligence.clv import CLVParams
from engine.segment_index import SegmentIndex
from engine.testing import START
from engine.types import iso
from rules.ruleset import RECIPES_DIR
from tests.distributed.conftest import Cluster
from tests.distributed.test_failover import wait_owned
from tests.engine.embedded.conftest import running
from tests.engine.embedded.test_segments_api import deploy
from tests.support.fixtures import KafkaTopicFactory
from tests.support.servers import KafkaServer, free_port
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

WRITE, ADMIN = "seg-write-token", "seg-admin-token"
STOCK = (RECIPES_DIR.parent / "segments" / "stock.yaml").read_text()
WELCOME = """
id: cart-nudge
trigger: {segment_entered: carted-not-bought}
steps:
  - send: {channel: webhook, template: your_cart}
"""
FILES = {"stock.yaml": STOCK, "flows.yaml": WELCOME}
ADDED = """
kind: segment
id: big-cart
description: a cart worth 50 or more
condition: "cart.value >= 50.0"
---
kind: segment
id: buyers
condition: "customer.orders >= 1"
"""
FILES_V2 = {**FILES, "added.yaml": ADDED}
PREDICTED = """
kind: segment
id: predicted
description: the CLV model has a prediction (customers with an order)
condition: "customer.predicted != null && customer.predicted.p_alive > 0.0"
"""
FILES_V3 = {**FILES_V2, "predicted.yaml": PREDICTED}
CARTED = "carted-not-bought"


def ev(n: int, etype: str, cid: str, at: int, props: dict[str, Any] | None = None) -> Any:
    return {
        "event_id": f"e{n}",
        "type": etype,
        "customer_id": cid,
        "timestamp": iso(at),
        "properties": props or {},
    }


def solo(base: int) -> list[dict[str, Any]]:
    """One customer: adds to the cart (enters carted-not-bought), then orders (leaves)."""
    return [
        ev(900, "cart_item_added", "solo", base, {"product_id": "p", "price": 5.0}),
        ev(901, "order_completed", "solo", base + 1, {"order_id": "s1", "total": 5.0}),
    ]


def trace(base: int) -> list[dict[str, Any]]:
    """Customers c00..c29 view and cart (c10..c19 a cart of 60); c00..c07 order (leave
    carted-not-bought; c07 for 600: vip); c08 orders twice; c09 starts a checkout;
    anonymous a0..a3 cart and are aliased to known u0..u3 (their memberships go with
    the state)."""
    out: list[dict[str, Any]] = []
    n = 0

    def add(etype: str, cid: str, props: dict[str, Any] | None = None) -> None:
        nonlocal n
        n += 1
        out.append(ev(n, etype, cid, base + n, props))

    for i in range(30):
        cid = f"c{i:02d}"
        add("product_viewed", cid, {"product_id": "p1"})
        add("cart_item_added", cid, {"product_id": "p1", "price": 60.0 if 10 <= i < 20 else 5.0})
    for i in range(9):
        total = 600.0 if i == 7 else 5.0
        add("order_completed", f"c{i:02d}", {"order_id": f"o{i}", "total": total})
    add("order_completed", "c08", {"order_id": "o8b", "total": 5.0})
    add("checkout_started", "c09")
    for i in range(4):
        add("cart_item_added", f"a{i}", {"product_id": "p2", "price": 7.0})
        add("customer_aliased", f"a{i}", {"user_id": f"u{i}"})
    return out


Get = Callable[[str], Awaitable[tuple[int, Any]]]


async def view(get: Get) -> dict[str, tuple[int, set[str]]]:
    """Segment id -> (listed size, member ids through the pages) as the API shows them."""
    status, body = await get("/v1/segments")
    assert status == 200, body
    out: dict[str, tuple[int, set[str]]] = {}
    for seg in body["segments"]:
        ids: set[str] = set()
        cursor = ""
        while True:
            status, page = await get(f"/v1/segments/{seg['id']}/members?limit=7{cursor}")
            assert status == 200, page
            ids |= {m["customer_id"] for m in page["members"]}
            if page["next_cursor"] is None:
                break
            cursor = f"&cursor={page['next_cursor']}"
        out[seg["id"]] = (seg["size"], ids)
    return out


def expected(with_added: bool) -> dict[str, tuple[int, set[str]]]:
    """What the trace must give (by hand: the parity test's other side is the engine)."""
    carted = {f"c{i:02d}" for i in range(9, 30)} | {f"u{i}" for i in range(4)}
    viewed = {f"c{i:02d}" for i in range(9, 30)}
    segs = {
        "new": {f"c{i:02d}" for i in range(8)},
        "returning": {"c08"},
        "vip": {"c07"},
        "viewed-not-bought": viewed,
        CARTED: carted,
        "checkout-abandoned": {"c09"},
        "lapsed": set(),
    }
    if with_added:
        segs["big-cart"] = {f"c{i:02d}" for i in range(10, 20)}
        segs["buyers"] = {f"c{i:02d}" for i in range(9)}
    return {sid: (len(ids), ids) for sid, ids in segs.items()}


async def embedded_view(tmp: Path, events: list[dict[str, Any]]) -> tuple[Any, Any]:
    """The trace through `nudge run` (in-process, virtual clock): the view under FILES,
    then after the V2 deploy and its backfill."""
    async with running(tmp / "embedded") as h:
        await deploy(h, FILES)
        status, body = await h.post_events(events)
        assert status == 202, body
        await h.settle()

        async def get(path: str) -> tuple[int, Any]:
            async with h.session.get(h.url(path), headers=h.auth("admin")) as r:
                return r.status, await r.json()

        before = await view(get)
        await deploy(h, FILES_V2)
        await h.runtime.segment_backfill.wait()
        await h.settle()
        return before, await view(get)


async def until(what: str, check: Callable[[], Awaitable[bool]], c: Cluster, t: float = 60) -> None:
    end = time.monotonic() + t
    while time.monotonic() < end:
        if await check():
            return
        for name, proc in c.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited:\n{c.log_tail(name)}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{c.log_tail('w1')}")


async def test_feed_follows_the_topic(
    kafka_server: KafkaServer, kafka_topic_factory: KafkaTopicFactory
) -> None:
    """The ingest's consumer alone, on records as a worker writes them: entries, an
    exit, a drop (an identity hand-over: no exit counted), an entry seen twice (a
    reprocessing: counted once); caught up once it read what was there at its start."""
    from aiokafka import AIOKafkaProducer

    topic = kafka_topic_factory("segments", partitions=2, config={"cleanup.policy": "compact"})
    now = int(time.time() * 1000)
    changes: list[tuple[str, str, bool | None, int]] = [
        ("k1", "vip", True, now - 5000),
        ("k2", "vip", True, now - 4000),
        ("k3", "vip", True, now - 3000),
        ("k2", "vip", False, now - 2000),  # left
        ("anon", "vip", True, now - 2500),
        ("anon", "vip", None, now - 1000),  # merged into another id
        ("k1", "vip", True, now - 5000),  # the same entry again
        ("k9", "gone", None, now - 1000),  # a drop for a segment it was not in
    ]
    records: list[Stamped] = segment_records(changes)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, ts, headers in records:  # a key's records to one partition
            await producer.send_and_wait(topic, value, key=key, timestamp_ms=ts, headers=headers)
        index = SegmentIndex(None)
        feed = SegmentFeed(kafka_server.url, topic, index)
        await feed.start()
        try:
            for _ in range(200):
                if feed.caught_up:
                    break
                await asyncio.sleep(0.05)
            assert feed.caught_up
            assert feed.records == len(records)
            assert sorted(cid for cid, _ in index.page("vip", None, 10)) == ["k1", "k3"]
            s = index.stats("vip", now)
            assert (s.size, s.entered_24h, s.exited_24h) == (2, 4, 1)
            assert index.size("gone") == 0
            # a record produced later is followed too
            [(key, value, ts, headers)] = segment_records([("k4", "vip", True, now)])
            await producer.send_and_wait(topic, value, key=key, timestamp_ms=ts)
            for _ in range(200):
                if index.since("vip", "k4") == now:
                    break
                await asyncio.sleep(0.05)
            assert index.since("vip", "k4") == now
        finally:
            await feed.stop()
    finally:
        await producer.stop()


async def test_segments_on_the_worker_match_nudge_run(
    cluster_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two workers (w1 serves the ingest): the stock segments over a trace, visible
    through the ingest's listing, pages, export, CLI and gauge; a customer enters
    carted-not-bought on add and leaves on order. Then a deploy by another process adds
    two segments: the workers backfill them (progress summed to done), the ingest lists
    them. Both views equal `nudge run`'s over the same events and deploy (sizes and
    member ids) and the hand-written expectation."""
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        for f in c.rules_dir.iterdir():
            f.unlink()
        for name, text in FILES.items():
            (c.rules_dir / name).write_text(text)
        port = free_port()
        c.start_worker("w1", "--http-port", str(port), "--data", str(c.tmp / "ingest"))
        c.start_worker("w2")
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with ClientSession() as session:

            async def get(path: str) -> tuple[int, Any]:
                try:
                    async with session.get(url + path, headers=headers) as r:
                        return r.status, await r.json(content_type=None)
                except OSError:
                    return 0, None

            async def listed() -> dict[str, int]:
                status, body = await get("/v1/segments")
                return {s["id"]: s["size"] for s in body["segments"]} if status == 200 else {}

            async def ready() -> bool:
                return bool(await listed())

            await until("the ingest's segment listing", ready, c)
            await wait_owned(c, ["w1", "w2"])

            # one customer: enters on add, leaves on order
            base = int(time.time() * 1000) - 60_000
            add, order = solo(base)
            async with session.post(
                url + "/v1/events", json=[add], headers={"Authorization": f"Bearer {WRITE}"}
            ) as r:
                assert r.status == 202, await r.text()

            async def solo_in() -> bool:
                return (await listed()).get(CARTED) == 1

            await until("solo in carted-not-bought", solo_in, c)
            status, page = await get(f"/v1/segments/{CARTED}/members")
            assert status == 200
            assert [m["customer_id"] for m in page["members"]] == ["solo"]
            async with session.post(
                url + "/v1/events", json=[order], headers={"Authorization": f"Bearer {WRITE}"}
            ) as r:
                assert r.status == 202, await r.text()

            async def solo_out() -> bool:
                return (await listed()).get(CARTED) == 0

            await until("solo out of carted-not-bought", solo_out, c)
            status, body = await get("/v1/segments")
            assert status == 200
            [carted] = [s for s in body["segments"] if s["id"] == CARTED]
            assert (carted["entered_24h"], carted["exited_24h"]) == (1, 1)
            # the flow on segment_entered ran on the worker
            await hook.wait_for(1)
            assert hook.deliveries[0].body["customer_id"] == "solo"

            # the trace (solo is in `new` now: part of what both runtimes must agree on)
            events = trace(base + 10)
            async with session.post(
                url + "/v1/events", json=events, headers={"Authorization": f"Bearer {WRITE}"}
            ) as r:
                assert r.status == 202, await r.text()
            want = expected(False)
            want["new"] = (want["new"][0] + 1, want["new"][1] | {"solo"})

            async def settled() -> bool:
                return await listed() == {sid: n for sid, (n, _) in want.items()}

            await until("the trace's memberships", settled, c)
            dist_before = await view(get)

            # the CLI, unchanged, against the ingest
            args = ["--url", url, "--token", ADMIN]
            assert await asyncio.to_thread(main, ["segments", "list", *args]) == 0
            assert CARTED in capsys.readouterr().out
            out = tmp_path / "carted.ndjson"
            export = ["segments", "export", CARTED, "-o", str(out), *args]
            assert await asyncio.to_thread(main, export) == 0
            exported = {orjson.loads(line)["customer_id"] for line in out.read_text().split()}
            assert exported == want[CARTED][1]
            async with session.get(url + "/metrics") as r:
                text = await r.text()
            gauge = {
                s.labels["segment"]: s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "nudge_segment_members"
            }
            assert gauge == {sid: n for sid, (n, _) in want.items()}

            # a deploy by another process: two segments more, backfilled on the workers
            await publish_rules_async(c.redis_url, FILES_V2, prefix=c.prefix)
            # every customer with a state is evaluated once: c00..c29, u0..u3 and solo
            # (the anonymous ids are redirects: skipped), on whichever worker owns it
            customers = 30 + 4 + 1

            async def backfilled() -> bool:
                status, body = await get("/v1/segments")
                if status != 200 or len(body["segments"]) != 9:
                    return False
                return bool(
                    body["backfill"] == {"done": customers, "total": customers, "running": False}
                )

            await until("the backfill", backfilled, c)
            want2 = expected(True)
            want2["new"] = want["new"]
            want2["buyers"] = (want2["buyers"][0] + 1, want2["buyers"][1] | {"solo"})

            async def settled2() -> bool:
                return await listed() == {sid: n for sid, (n, _) in want2.items()}

            await until("the backfilled memberships", settled2, c)
            dist_after = await view(get)

            async def both_backfilled() -> bool:  # stats files lag up to a second
                done = [c.stats(n).get("engine", {}).get("backfilled", 0) for n in ("w1", "w2")]
                return all(done) and sum(done) == customers

            await until("both workers' backfill counts", both_backfilled, c, 10)

            # predictions on the workers: a CLV model stored in Redis (as `nudge models
            # fit --broker` stores it) reaches both workers' processors, and a deployed
            # segment reading customer.predicted holds every customer with an order
            redis = RedisState(c.redis_url, prefix=c.prefix)
            try:
                stored = CLVParams(
                    r=0.6, alpha=45.0, a=0.9, b=3.2, p=5.0, q=4.0, v=36.0,
                    fitted_at=base, version=1, customers=100,
                )  # fmt: skip
                assert await redis.save_model(CLV, 1, orjson.dumps(stored.to_dict()).decode())
            finally:
                await redis.close()

            async def models_applied() -> bool:
                got = [c.stats(n).get("models", {}).get("clv_version") for n in ("w1", "w2")]
                return got == [1, 1]

            await until("the CLV model on both workers", models_applied, c, 20)
            status, body = await get("/v1/models")
            assert status == 200
            assert body["clv"]["version"] == 1
            await publish_rules_async(c.redis_url, FILES_V3, prefix=c.prefix)

            async def predicted() -> bool:
                return (await listed()).get("predicted") == want2["buyers"][0]

            await until("the predicted segment backfilled", predicted, c)
            status, page = await get("/v1/segments/predicted/members?limit=1000")
            assert {m["customer_id"] for m in page["members"]} == want2["buyers"][1]
        # the same events and deploy through `nudge run`
        emb_before, emb_after = await embedded_view(tmp_path, [*solo(START), *trace(START + 10)])
        assert dist_before == emb_before == want
        assert dist_after == emb_after == want2
    finally:
        await hook.stop()
