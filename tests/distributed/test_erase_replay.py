"""An erased customer stays erased on the real Kafka when its partition is processed again
(engine/distributed/erase_marks.py), and what is left of them on the broker and in Redis.

Mid-stream (other customers' events before and after), a customer with an email is
erased through the ingest; the worker is SIGKILLed and the group's ``events`` offsets
are reset to the beginning (a replay: the strongest form of a restart before the commit),
then a new worker processes the whole topic again: the erased customer's events are
skipped, no state, no changelog row and no action of theirs comes back, the others are
whole. Then every record of every topic and every Redis key is searched for the id and
the email: the hits are only where Kafka keeps records until retention or compaction
(docs/operations.md, "Erasure"), none in Redis; after ``purge_consumed`` (DeleteRecords
below the committed offsets) and the replies topic's, only the changelog's (the rows
before the tombstone until compaction, the tombstone's key until delete.retention.ms)
are left; once the changelog is compacted (made eager here: segments rolled every
second, delete.retention.ms 0), no record of any topic holds the id or the email."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from engine.distributed.purge import purge_consumed
from engine.erasure import scan_kafka, scan_redis
from engine.types import iso
from tests.distributed.conftest import Cluster
from tests.distributed.test_failover import wait_owned
from tests.distributed.test_segments import until
from tests.support.servers import free_port
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

WRITE, ADMIN = "erase-write-token", "erase-admin-token"
CID, EMAIL = "gone-7f3a", "gone.7f3a@example.com"


def _mine(at: int) -> list[dict[str, Any]]:
    """The customer to erase: signs up with an email, views, adds to cart, orders."""

    def ev(i: int, etype: str, props: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": f"{CID}-{i}",
            "type": etype,
            "customer_id": CID,
            "timestamp": iso(at + i),
            "properties": props,
        }

    return [
        ev(0, "customer_signed_up", {"attributes": {"email": EMAIL}}),
        ev(1, "product_viewed", {"product_id": "p1"}),
        ev(2, "cart_item_added", {"product_id": "p2", "price": 5.0}),
        ev(3, "order_completed", {"order_id": f"{CID}-o", "total": 12.0}),
        ev(4, "product_viewed", {"product_id": "p3"}),
    ]


async def _ends(bootstrap: str, topics: list[str], partitions: int) -> dict[tuple[str, int], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _reset_to_start(bootstrap: str, group: str, topic: str, partitions: int) -> None:
    """Commit offset 0 for the group's ``topic`` partitions (once the killed member's
    session expired and the group is empty)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    end = time.monotonic() + 60
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.commit(dict.fromkeys(tps, 0))
            return
        except KafkaError:
            if time.monotonic() > end:
                raise
        finally:
            await consumer.stop()
        await asyncio.sleep(1)


def _where(hits: list[tuple[str, bytes]]) -> dict[str, set[bytes]]:
    """topic (or redis) -> the needles found there."""
    out: dict[str, set[bytes]] = {}
    for where, needle in hits:
        out.setdefault(where.split("/")[0].split("@")[0], set()).add(needle)
    return out


async def test_erased_customer_stays_erased_through_a_replay(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    c: Cluster = cluster_factory(hook.url)
    bootstrap = c.kafka.bootstrap
    changelog = f"{c.app_id}-customers-changelog"
    replies = f"{c.app_id}-replies"
    try:
        port = free_port()
        c.start_worker("w1", "--http-port", str(port), "--data", str(c.tmp / "ingest"))
        url = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with ClientSession() as session:

            async def call(method: str, path: str) -> tuple[int, Any]:
                try:
                    async with session.request(method, url + path, headers=admin) as r:
                        return r.status, await r.json(content_type=None)
                except OSError:
                    return 0, None

            async def post(events: list[dict[str, Any]]) -> None:
                auth = {"Authorization": f"Bearer {WRITE}"}
                async with session.post(url + "/v1/events", json=events, headers=auth) as r:
                    assert r.status == 202, await r.text()

            async def served() -> bool:
                return (await call("GET", "/v1/customers/nobody"))[0] == 404

            await until("the ingest answering", served, c)
            await wait_owned(c, ["w1"])
            now = int(time.time() * 1000) - 60_000
            before = make_events(400, now, customers=40, prefix="b")
            after = make_events(400, now + 10_000, customers=40, prefix="a")
            mine = _mine(now + 500)
            # mid-stream: the customer's events among the others'
            for i in range(0, 400, 100):
                await post(before[i : i + 100] + mine[i // 100 : i // 100 + 1])
            await post(mine[4:])

            async def ordered() -> bool:
                status, body = await call("GET", f"/v1/customers/{CID}")
                return status == 200 and body["profile"]["orders"] == 1

            await until("the customer's events processed", ordered, c)
            assert (await call("GET", f"/v1/customers/{CID}"))[1]["profile"]["attributes"] == {
                "email": EMAIL
            }

            async def delivered() -> bool:
                return sum(d.body["customer_id"] == CID for d in hook.deliveries) >= 4

            await until("the customer's actions delivered", delivered, c)
            status, body = await call("DELETE", f"/v1/customers/{CID}")
            assert status == 200, body
            assert body["erased"]["state"] is True
            for i in range(0, 400, 100):
                await post(after[i : i + 100])

            async def others_done() -> bool:  # c39's last event is the trace's last
                status, body = await call("GET", "/v1/customers/c39")
                return status == 200 and body["profile"]["last_seen"] == iso(now + 10_399)

            await until("the events after the erase processed", others_done, c)
            await asyncio.sleep(2.5)  # the offsets committed (every second)
            c.kill("w1")
            delivered_before = len(hook.deliveries)
            ends = await _ends(bootstrap, [c.actions_topic, changelog], c.partitions)
            await _reset_to_start(bootstrap, c.app_id, c.events_topic, c.partitions)

            # a new worker processes the whole events topic again
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            c.procs.clear()
            c.start_worker("w2", "--http-port", str(port), "--data", str(c.tmp / "ingest2"))
            await until("the new worker answering", served, c)

            async def replayed() -> bool:
                engine = c.stats("w2").get("engine", {})
                return int(engine.get("erased_skipped", 0)) >= len(mine) and int(
                    engine.get("skipped", 0)
                ) >= len(before) + len(after)

            await until("the replay", replayed, c, t=90)
            assert (await call("GET", f"/v1/customers/{CID}"))[0] == 404
            assert (await call("GET", "/v1/customers/c1"))[0] == 200  # the others whole
            await asyncio.sleep(2)  # deliveries of anything produced in the replay
            again = [d for d in hook.deliveries[delivered_before:] if d.body["customer_id"] == CID]
            assert again == []
            # nothing of the customer produced in the replay: no action, no changelog row
            new = await _records_since(bootstrap, ends)
            assert [k for k in new if CID.encode() in k] == [], new
            engine = c.stats("w2")["engine"]
            print("replay:", {k: engine[k] for k in ("events", "skipped", "erased_skipped")})
            # counted on the worker's /metrics as well, with nudge run's name
            async with session.get(url + "/metrics") as r:
                scraped = {
                    s.name: s.value
                    for fam in text_string_to_metric_families(await r.text())
                    for s in fam.samples
                }
            assert scraped["nudge_events_erased_skipped_total"] >= len(mine)
            assert scraped["nudge_events_erased_skipped_total"] >= engine["erased_skipped"]

        # what is left of the customer anywhere in Kafka and Redis
        needles = [CID.encode(), EMAIL.encode()]
        hits = _where(await scan_kafka(bootstrap, needles))
        redis_hits = await scan_redis(c.redis_url, needles)
        print("left before the purge:", {t: sorted(n) for t, n in hits.items()})
        assert redis_hits == []
        # the events (and the erase request), the actions and the changelog keep them
        # until retention / compaction; the replies topic (an hour) the answers
        assert set(hits) <= {c.events_topic, c.actions_topic, changelog, replies}
        assert EMAIL.encode() in hits[c.events_topic]  # the sign-up, as sent
        await asyncio.sleep(2.5)  # w2's offsets committed
        purged = await purge_consumed(bootstrap, c.app_id, [c.events_topic, c.actions_topic])
        assert set(purged) == {c.events_topic, c.actions_topic}
        from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
        from aiokafka.structs import TopicPartition

        end = (await _ends(bootstrap, [replies], 1))[(replies, 0)]
        adm = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await adm.start()
        try:  # the replies nobody waits for any more
            await adm.delete_records({TopicPartition(replies, 0): RecordsToDelete(end)})
        finally:
            await adm.close()
        left = _where(await scan_kafka(bootstrap, needles))
        print("left after the purge:", {t: sorted(n) for t, n in left.items()})
        assert set(left) <= {changelog}
        # the changelog forgets the customer once compacted: its older rows go at the first
        # clean after the tombstone, the tombstone itself after delete.retention.ms (set to
        # 0 here; docs/operations.md gives the settings for production)
        t0 = time.monotonic()
        gone = await _compact_away(bootstrap, changelog, c.partitions, needles, within=150.0)
        print(f"changelog compacted clean of the customer in {time.monotonic() - t0:.0f} s")
        assert gone, _where(await scan_kafka(bootstrap, needles))
    finally:
        c.stop_all()
        await hook.stop()


async def _compact_away(
    bootstrap: str, topic: str, partitions: int, needles: list[bytes], within: float
) -> bool:
    """Make ``topic`` compact eagerly (segments roll every second, any dirt is worth a
    clean, tombstones kept 0 ms), keep rolling its segments with filler tombstones, and
    wait until no record holds a needle. True when that happened ``within`` seconds (the
    broker's cleaner looks every 15 s by default)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    adm = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await adm.start()
    try:
        answers = await adm.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    configs={  # AlterConfigs replaces the topic's whole set: all of it here
                        "cleanup.policy": "compact",
                        "segment.ms": "1000",
                        "min.cleanable.dirty.ratio": "0.001",
                        "delete.retention.ms": "0",
                        "min.compaction.lag.ms": "0",
                        "max.compaction.lag.ms": "1000",
                    },
                )
            ]
        )
    finally:
        await adm.close()
    for answer in answers:
        for code, message, *_ in answer.resources:
            assert code == 0, message
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        deadline = time.monotonic() + within
        n = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(1.5)
            n += 1
            for p in range(partitions):  # a new record past segment.ms rolls the segment
                await producer.send_and_wait(topic, None, key=f"\x00roll-{n}".encode(), partition=p)
            hits = [h for h in await scan_kafka(bootstrap, needles) if h[0].startswith(topic)]
            if not hits:
                return True
        return False
    finally:
        await producer.stop()


async def _records_since(bootstrap: str, ends: dict[tuple[str, int], int]) -> list[bytes]:
    """Keys (and values) of the records written after ``ends`` (topic, partition) ->
    offset: what the replay produced."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    out: list[bytes] = []
    try:
        tps = [TopicPartition(t, p) for t, p in ends]
        consumer.assign(tps)
        now = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, ends[(tp.topic, tp.partition)])
        left = {tp for tp in tps if now[tp] > ends[(tp.topic, tp.partition)]}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000)
            if not batch:
                break
            for tp, recs in batch.items():
                for rec in recs:
                    out.append((rec.key or b"") + b"\0" + (rec.value or b""))
                    if rec.offset + 1 >= now[tp]:
                        left.discard(tp)
    finally:
        await consumer.stop()
    return out
