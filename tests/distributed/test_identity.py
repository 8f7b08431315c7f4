"""Identity merges on `nudge worker`: anonymous visitors are aliased to known customers
whose state lives on other partitions, and go on under their anonymous ids. One of two
workers is SIGKILLed right after the aliases were produced, while merges and forwards
are in flight; the webhook must receive exactly the core's actions over the same events
(the backtest, where forwards are processed in place): the run without the kill."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.distributed.conftest import Cluster, expected_keys, produce
from tests.distributed.test_failover import repeats, wait_owned
from tests.distributed.test_worker import check, wait_keys
from tests.support.traces import identity_trace
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


async def test_merges_survive_a_worker_killed_in_the_middle(cluster_factory: Any) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        c.start_worker("w1")
        c.start_worker("w2")
        await wait_owned(c, ["w1", "w2"])
        events = identity_trace(int(time.time() * 1000) - 60_000)
        want = expected_keys(c.rules_dir, events)
        chunks = [events[i : i + 40] for i in range(0, len(events), 40)]
        alias_chunk = next(i for i, ch in enumerate(chunks) if ch[-1]["type"] == "customer_aliased")
        sent_before_kill = 0
        for i, chunk in enumerate(chunks):
            await produce(c.kafka.bootstrap, c.events_topic, chunk)
            if i == alias_chunk:
                await asyncio.sleep(0.05)  # the merges are being produced
                c.kill("w2")
                await asyncio.sleep(0.3)
                sent_before_kill = len(hook.deliveries)
            await asyncio.sleep(0.03)
        await wait_keys(hook, want, c, timeout=90)
        missing, extra, twice = check(hook, want)
        in_flight, late = repeats(hook, sent_before_kill)
        forwards = c.stats("w1")["engine"]["forwards"]
        print(
            f"expected={len(want)} delivered={len(hook.deliveries)} missing={missing} "
            f"extra={extra} twice={twice} (in flight at the kill: {in_flight}) "
            f"survivor forwards={forwards}"
        )
        assert (missing, extra, late) == (0, 0, 0), c.log_tail("w1")
        assert in_flight <= 64
        assert forwards > 0  # the survivor forwarded too (its own and w2's partitions)
    finally:
        await hook.stop()
