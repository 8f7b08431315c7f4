"""Campaign counts on `nudge worker --analytics on` through a failover: two workers, one
SIGKILLed mid-stream; the survivor reprocesses what the changelog did not hold. The
report API on the distributed ingest (and the console's rule page) then shows exactly
the counts the core produces on the same trace: entries, completions, exits, sends and
each step's reach per rule, sends equal to the actions delivered, and every entry
completed, exited or open. Nothing counted twice, nothing missing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, CookieJar

from engine.events import decode_event
from engine.partition import Partition
from rules.ruleset import load_ruleset
from tests.distributed.conftest import Cluster, expected_keys, produce
from tests.distributed.test_failover import wait_owned
from tests.distributed.test_worker import check, wait_keys
from tests.support.servers import free_port
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

READ, WRITE, ADMIN = "an-read-token", "an-write-token", "an-admin-token"

# an experiment whose fires and conversions do not depend on timing either: every page
# view enters (no wait), an order within 3 days converts once per customer and window
EXPERIMENT = """id: page-ab
trigger: {event: page_viewed}
reentry: always
experiment:
  variants: {a: 45, b: 45}
  holdout: 10
  goal: {event: order_completed, within: 3d}
steps:
  - send: {channel: webhook, template: ab}
"""


def core_arms(c: Cluster, events: list[dict[str, Any]]) -> dict[tuple[str, str], Counter[str]]:
    """(rule, variant) -> entered / sends / holdout / conversions, as the core counts."""
    part = Partition(0, load_ruleset([str(c.rules_dir)]), lambda out: None, analytics=True)
    evs = [decode_event(orjson.dumps(e)) for e in events]
    for seq, ev in enumerate(evs, 1):
        part.apply(seq, ev.ts, ev)
    part.fire_until(evs[-1].ts + 3_600_000)
    assert part.tally is not None
    out: dict[tuple[str, str], Counter[str]] = {}
    for (rid, _ver, variant, _pc, metric, _hour), n in part.tally.totals().items():
        key = {"sent": "sends"}.get(metric.split(":")[0], metric)
        if key in ("entered", "sends", "holdout", "conversions"):
            out.setdefault((rid, variant), Counter())[key] += n
    return out


def core_counts(c: Cluster, events: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """rule -> metric (``sent:*`` as ``sends``, ``exited:*`` as ``exited``, ``reached@pc``)
    -> count, from one analytics partition over the trace, every timer fired."""
    part = Partition(0, load_ruleset([str(c.rules_dir)]), lambda out: None, analytics=True)
    evs = [decode_event(orjson.dumps(e)) for e in events]
    for seq, ev in enumerate(evs, 1):
        part.apply(seq, ev.ts, ev)
    part.fire_until(evs[-1].ts + 3_600_000)
    assert part.tally is not None
    out: dict[str, Counter[str]] = {}
    for (rid, _ver, _variant, pc, metric, _hour), n in part.tally.totals().items():
        key = metric.split(":")[0]
        key = {"sent": "sends"}.get(key, key)
        if key == "reached":
            key = f"reached@{pc}"
        elif key not in ("entered", "sends", "completed", "exited"):
            continue  # per arm: core_arms
        out.setdefault(rid, Counter())[key] += n
    return out


def report_counts(body: dict[str, Any]) -> Counter[str]:
    got: Counter[str] = Counter()
    got["entered"] = body["entered"]
    got["sends"] = body["sends"]
    got["completed"] = body["completed"]
    got["exited"] = sum(body["exited"].values())
    for step in body["funnel"]:
        got[f"reached@{step['step']}"] = step["reached"]
    return +got


async def test_counts_exact_through_a_failover(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_READ_TOKEN", READ)
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        (c.rules_dir / "ab.yaml").write_text(EXPERIMENT)
        port = free_port()
        c.start_worker(
            "w1", "--analytics", "on", "--http-port", str(port), "--data", str(c.tmp / "in")
        )
        c.start_worker("w2", "--analytics", "on")
        await wait_owned(c, ["w1", "w2"])
        # event times ahead of the clock: cart waits are pending at w2 when it dies
        # 397 customers: each gets every event type (page views, then orders that convert)
        events = make_events(3000, int(time.time() * 1000) + 3000, customers=397)
        want = expected_keys(c.rules_dir, events)
        chunks = [events[i : i + 100] for i in range(0, len(events), 100)]
        for i, chunk in enumerate(chunks):
            if i == 12:
                c.kill("w2")
            await produce(c.kafka.bootstrap, c.events_topic, chunk)
            await asyncio.sleep(0.05)
        await wait_keys(hook, want, c, timeout=90)
        missing, extra, _ = check(hook, want)
        assert (missing, extra) == (0, 0), c.log_tail("w1")
        rule_of = {d.key: d.body["rule_id"] for d in hook.deliveries}
        sent_by_rule = Counter(rule_of[k] for k in want)  # each action once
        expect = core_counts(c, events)
        assert set(expect) == {"order-thanks", "viewed", "cart-later", "page-ab"}
        assert {r: e["sends"] for r, e in expect.items()} == dict(sent_by_rule)

        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {READ}"}
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as s:  # an IP host

            async def reports() -> dict[str, Counter[str]]:
                out = {}
                for rid in expect:
                    async with s.get(f"{url}/v1/reports/rules/{rid}", headers=auth) as r:
                        assert r.status == 200, await r.text()
                        out[rid] = report_counts(await r.json())
                return out

            end = time.monotonic() + 60
            got = await reports()
            while got != expect and time.monotonic() < end:
                await asyncio.sleep(0.5)
                got = await reports()
            assert got == expect, (got, expect, c.log_tail("w1"))
            await asyncio.sleep(2.0)  # a late double fold would show now
            assert await reports() == expect
            for rid, e in got.items():  # every entry completed, exited or open (none open)
                assert e["entered"] == e["completed"] + e["exited"], rid

            async with s.get(f"{url}/v1/reports/rules", headers=auth) as r:
                listing = {x["rule_id"]: x for x in (await r.json())["rules"]}
            assert {rid: x["sends"] for rid, x in listing.items()} == dict(sent_by_rule)
            # per arm: the experiment report's entries and conversions, the rule report's
            # sends per variant, equal the core's (holdout entries get no send)
            arms = core_arms(c, events)
            assert {v for r, v in arms if r == "page-ab"} == {"a", "b", "holdout"}
            assert arms[("page-ab", "holdout")]["conversions"] > 0
            async with s.get(f"{url}/v1/reports/experiments/page-ab", headers=auth) as r:
                assert r.status == 200
                body = await r.json()
            got_arms = {a["variant"]: (a["entered"], a["converted"]) for a in body["arms"]}
            want_arms = {
                v: (n["entered"], n["conversions"]) for (r, v), n in arms.items() if r == "page-ab"
            }
            assert got_arms == want_arms
            async with s.get(f"{url}/v1/reports/rules/page-ab", headers=auth) as r:
                detail = await r.json()
            assert {v["variant"]: v["sends"] for v in detail["variants"]} == {
                v: n["sends"] for (r, v), n in arms.items() if r == "page-ab"
            }
            assert detail["funnel"][0]["suppressed"] == {
                "holdout": arms[("page-ab", "holdout")]["holdout"]
            }

            # the console on the distributed ingest: the rule page shows the same funnel
            async with s.post(f"{url}/ui/login", data={"token": READ}) as r:
                assert r.status == 200
            async with s.get(f"{url}/ui/rules/cart-later") as r:
                page = await r.text()
                assert r.status == 200
            assert f"{expect['cart-later']['entered']:,}" in page, page
            async with s.get(f"{url}/ui/customers/c7") as r:  # from the owning worker
                assert r.status == 200
                assert "c7" in await r.text()
        survivor = c.stats("w1")["engine"]
        print(f"counts {got}; survivor {survivor}")
        assert survivor["partitions"] == list(range(c.partitions))
        assert survivor["timers_restored"] > 0  # w2's pending waits, fired by w1
    finally:
        await hook.stop()
