"""Two workers, four partitions: one is SIGKILLed mid-stream; the survivor takes its
partitions, restores their rows from the changelog, fires their pending timers, and the
webhook receives exactly the expected actions: none missing, none twice (except sends
the killed worker had in flight when it died: see the test). Also: a rule
deploy through Redis reaches both workers without restart, and a Redis restart mid-run
loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.distributed.rules import publish_rules_async
from tests.distributed.conftest import Cluster, expected_keys, produce
from tests.distributed.test_worker import check, wait_keys
from tests.support.servers import RedisServer
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


async def wait_owned(c: Cluster, names: list[str], timeout: float = 60.0) -> None:
    """Until the workers together own every partition, each at least one."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        parts = [c.stats(n).get("engine", {}).get("partitions", []) for n in names]
        if all(parts) and sorted(p for ps in parts for p in ps) == list(range(c.partitions)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"partitions never spread: {[c.stats(n) for n in names]}")


async def wait_pending(c: Cluster, name: str, timeout: float = 60) -> None:
    """Until ``name`` reports timers pending in states it wrote to its changelog."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        eng = c.stats(name).get("engine", {})
        if eng.get("pending_timers", 0) > 0 and eng.get("rows_written", 0) > 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never held a pending timer: {c.stats(name)}")


def repeats(hook: WebhookReceiver, first_n: int) -> tuple[int, int]:
    """Keys delivered more than once: (first delivered among the first ``first_n``
    deliveries, first delivered later)."""
    first: dict[str, int] = {}
    early = late = 0
    for i, d in enumerate(hook.deliveries):
        j = first.setdefault(d.key, i)
        if j != i:
            if j < first_n:
                early += 1
            else:
                late += 1
    return early, late


async def test_sigkill_one_of_two_workers(cluster_factory: Any) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        c.start_worker("w1")
        c.start_worker("w2")
        await wait_owned(c, ["w1", "w2"])
        # event times run ahead of the clock: the 1s cart waits are still pending at w2
        # when it dies, so the survivor must restore and fire them
        events = make_events(3000, int(time.time() * 1000) + 3000, customers=400)
        want = expected_keys(c.rules_dir, events)
        chunks = [events[i : i + 100] for i in range(0, len(events), 100)]
        sent_before_kill = 0
        for i, chunk in enumerate(chunks):
            if i == 12:
                # on a loaded machine w2 may not have written a state with a pending
                # timer yet: then nothing is restored (it is all reprocessed) and the
                # restore path goes untested
                await wait_pending(c, "w2")
                c.kill("w2")
                await asyncio.sleep(0.3)  # POSTs w2 wrote before dying reach the receiver
                sent_before_kill = len(hook.deliveries)
            await produce(c.kafka.bootstrap, c.events_topic, chunk)
            await asyncio.sleep(0.05)
        await wait_keys(hook, want, c, timeout=90)
        missing, extra, twice = check(hook, want)
        in_flight, late = repeats(hook, sent_before_kill)
        print(
            f"expected={len(want)} delivered={len(hook.deliveries)} missing={missing} "
            f"extra={extra} twice={twice} (in flight at the kill: {in_flight}, "
            f"others: {late}) survivor={c.stats('w1')}"
        )
        # A webhook cannot get exactly-once across a SIGKILL: an action the killed worker
        # had POSTed but not yet marked sent in Redis is sent again by the survivor once
        # the claim expires (same Idempotency-Key, for the receiver to drop). Those are
        # the only repeats allowed: at most one delivery batch in flight (64), each
        # first delivered before the kill; none missing, none extra, no other repeat.
        assert (missing, extra, late) == (0, 0, 0), c.log_tail("w1")
        assert in_flight <= 64
        survivor = c.stats("w1")["engine"]
        assert survivor["partitions"] == list(range(c.partitions))
        assert survivor["timers_restored"] > 0
    finally:
        await hook.stop()


async def test_rule_deploy_reaches_both_workers(cluster_factory: Any) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        c.start_worker("w1")
        c.start_worker("w2")
        await wait_owned(c, ["w1", "w2"])
        files = {str(p): p.read_text() for p in sorted(c.rules_dir.iterdir())}
        files["hello.yaml"] = (
            "id: page-hello\ntrigger: {event: page_viewed}\nreentry: once\n"
            "steps:\n  - send: {channel: webhook, template: hello}\n"
        )
        version = await publish_rules_async(c.redis_url, files, prefix=c.prefix)
        assert version == 2
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if all(c.stats(n)["engine"]["rules_version"] == 2 for n in ("w1", "w2")):
                break
            await asyncio.sleep(0.1)
        assert all(c.stats(n)["engine"]["rules_version"] == 2 for n in ("w1", "w2"))
        now = int(time.time() * 1000)
        events = [
            {
                "event_id": f"pv{i}",
                "type": "page_viewed",
                "customer_id": f"d{i}",
                "timestamp": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now / 1000))}Z",
                "properties": {},
            }
            for i in range(200)
        ]
        await produce(c.kafka.bootstrap, c.events_topic, events)
        end = time.monotonic() + 30
        while len(hook.deliveries) < 200 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        hello = {
            d.body["customer_id"] for d in hook.deliveries if d.body["rule_id"] == "page-hello"
        }
        assert hello == {f"d{i}" for i in range(200)}
        assert len(hook.deliveries) == 200
        await asyncio.sleep(1.5)  # stats files are written every second
        assert all(c.stats(n)["engine"]["events"] > 0 for n in ("w1", "w2"))
    finally:
        await hook.stop()


async def test_redis_restart_mid_run(cluster_factory: Any, redis_server: RedisServer) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        c.start_worker("w1")
        await wait_owned(c, ["w1"])
        events = make_events(2000, int(time.time() * 1000) - 60_000, customers=300)
        want = expected_keys(c.rules_dir, events)
        chunks = [events[i : i + 100] for i in range(0, len(events), 100)]
        for i, chunk in enumerate(chunks):
            if i == 8:
                await asyncio.to_thread(redis_server.restart)
            await produce(c.kafka.bootstrap, c.events_topic, chunk)
            await asyncio.sleep(0.05)
        await wait_keys(hook, want, c, timeout=90)
        missing, extra, twice = check(hook, want)
        print(f"expected={len(want)} missing={missing} extra={extra} twice={twice}")
        assert (missing, extra, twice) == (0, 0, 0), c.log_tail("w1")
    finally:
        await hook.stop()
