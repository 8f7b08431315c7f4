"""`nudge worker --role process` + `--role deliver` through a receiver outage (issue 19),
with the delivery worker kill -9ed during it: every action arrives once, in per-customer
order, none dead-lettered. Real Kafka and Redis; timings scaled by 1/10 in the sink
config (an 8 s outage standing for the issue's 60 s, as in
tests/engine/embedded/test_delivery_restart.py)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest

from engine.backtest import backtest
from rules.ruleset import load_ruleset
from tests.distributed.conftest import Cluster, produce
from tests.engine.embedded.test_delivery_restart import SCALED, OutageReceiver, per_customer
from tests.support.traces import make_events

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


async def test_split_roles_ride_out_an_outage_and_a_kill_9(cluster_factory: Any) -> None:
    hook = OutageReceiver(secret=None)
    await hook.start()
    try:
        c: Cluster = cluster_factory(f"http://127.0.0.1:{hook.port}/hook")
        options = {k: v for k, v in SCALED.items() if not k.startswith("signing")}
        sink = {"type": "webhook", "url": f"http://127.0.0.1:{hook.port}/hook", **options}
        c.sinks_file.write_bytes(orjson.dumps({"default": "hook", "sinks": {"hook": sink}}))
        events = make_events(600, int(time.time() * 1000) - 60_000)
        made = backtest(load_ruleset([str(c.rules_dir)]), [orjson.dumps(e) for e in events])
        want = {a.idempotency_key for a in made.actions}
        # the order a customer's event-triggered actions were made in (a timer's send may
        # fall before or after a later event's, as processing time goes)
        ordered: dict[str, list[str]] = defaultdict(list)
        for a in made.actions:
            if a.rule_id != "cart-later":
                ordered[a.customer_id].append(a.idempotency_key)
        await produce(c.kafka.bootstrap, c.events_topic, list(events))
        down_at = time.monotonic()
        c.start_worker("proc", "--role", "process")
        c.start_worker("send", "--role", "deliver")
        await asyncio.sleep(5.0)  # processed, delivery retrying, the breaker open
        c.kill("send")
        c.start_worker("send2", "--role", "deliver")
        await asyncio.sleep(max(0.0, 8.0 - (time.monotonic() - down_at)))
        assert hook.deliveries == []
        attempts_down = hook.attempts_down
        hook.down = False
        up_at = time.monotonic()
        end = up_at + 90
        while set(hook.keys()) < want and time.monotonic() < end:
            for name in ("proc", "send2"):
                assert c.procs[name].poll() is None, c.log_tail(name)
            await asyncio.sleep(0.1)
        resumed = time.monotonic() - up_at
        await asyncio.sleep(1.0)  # late duplicates would show up now
        stats = c.stats("send2")
    finally:
        await hook.stop()
    keys = hook.keys()
    print(
        f"actions={len(want)} attempts_during_8s_outage={attempts_down} "
        f"all_delivered_{resumed:.2f}s_after_recovery duplicates={len(keys) - len(set(keys))}"
    )
    assert set(keys) == want, c.log_tail("send2")
    assert len(keys) == len(want)  # once each
    got = per_customer(hook.deliveries)
    for cid, seq in ordered.items():
        assert [k for k in got[cid] if k in set(seq)] == seq
    assert stats.get("delivery", {}).get("dead", 0) == 0
    assert attempts_down < len(want)
