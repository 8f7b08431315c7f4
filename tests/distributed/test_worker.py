"""Events through Kafka -> ``nudge worker`` (faust, subprocess) -> actions at a webhook
equal the core over the same events (``engine.backtest``), each delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.types import iso
from tests.distributed.conftest import Cluster, expected_keys, produce
from tests.support.servers import free_port
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


async def wait_keys(
    hook: WebhookReceiver, want: set[str], cluster: Cluster, timeout: float = 60.0
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if {d.key for d in hook.deliveries} >= want:
            await asyncio.sleep(1.0)  # late duplicates would show up now
            return
        for name, proc in cluster.procs.items():
            if proc.poll() is not None and name not in cluster.killed:
                raise AssertionError(f"worker {name} exited:\n{cluster.log_tail(name)}")
        await asyncio.sleep(0.2)


def check(hook: WebhookReceiver, want: set[str]) -> tuple[int, int, int]:
    got = [d.key for d in hook.deliveries]
    missing = want - set(got)
    extra = set(got) - want
    twice = len(got) - len(set(got))
    return len(missing), len(extra), twice


@contextlib.asynccontextmanager
async def trace_through(
    cluster_factory: Any,
    workers: dict[str, tuple[str, ...]],
    n_events: int = 1200,
    bad: list[bytes] | None = None,
) -> AsyncIterator[tuple[Cluster, WebhookReceiver, list[dict[str, Any]], set[str]]]:
    """A generated trace produced (``bad`` raw records after its first 100 events),
    ``workers`` (name -> extra args) started, and every expected action key delivered
    (late duplicates given a second to show up)."""
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        events = make_events(n_events, int(time.time() * 1000) - 60_000)
        want = expected_keys(c.rules_dir, events)
        records: list[dict[str, Any] | bytes] = [*events[:100], *(bad or ()), *events[100:]]
        await produce(c.kafka.bootstrap, c.events_topic, records)
        for name, extra in workers.items():
            c.start_worker(name, *extra)
        await wait_keys(hook, want, c)
        yield c, hook, events, want
    finally:
        await hook.stop()


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics, parsed: sample name (with labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[f"{smp.name}{{{labels}}}" if labels else smp.name] = smp.value
    return out


async def test_events_to_actions_match_backtest(cluster_factory: Any) -> None:
    port = free_port()
    workers: dict[str, tuple[str, ...]] = {"w1": ("--metrics-port", str(port))}
    async with trace_through(cluster_factory, workers) as (c, hook, events, want):
        missing, extra, twice = check(hook, want)
        stats = c.stats("w1")
        print(f"expected={len(want)} delivered={len(hook.deliveries)} stats={stats}")
        assert (missing, extra, twice) == (0, 0, 0), c.log_tail("w1")
        assert len(want) > 500
        m = await asyncio.to_thread(scrape, port)
        assert m["nudge_up{role=worker-all}"] == 1
        assert m["nudge_events_processed_total"] == len(events)
        assert m["nudge_worker_partitions"] == 4
        # the event loop's measures, sampled on faust's loop (engine/loop_samplers.py)
        assert m["nudge_event_loop_lag_seconds_count"] > 0
        assert 0 < m["nudge_event_loop_busy_ratio"] <= 1
        settled = m["nudge_worker_deliveries_total{outcome=sent}"]
        assert settled + m["nudge_worker_deliveries_total{outcome=skipped_done}"] == len(want)


async def test_split_roles_process_and_deliver(cluster_factory: Any) -> None:
    """``--role process`` and ``--role deliver`` in two processes: the same actions, once."""
    workers: dict[str, tuple[str, ...]] = {
        "proc": ("--role", "process"),
        "send": ("--role", "deliver"),
    }
    async with trace_through(cluster_factory, workers) as (c, hook, events, want):
        assert check(hook, want) == (0, 0, 0), c.log_tail("proc") + c.log_tail("send")
        end = time.monotonic() + 10  # stats files are rewritten every second
        while time.monotonic() < end:
            proc, send = c.stats("proc"), c.stats("send")
            if send.get("delivery", {}).get("sent") == len(want):
                break
            await asyncio.sleep(0.2)
        assert "delivery" not in proc
        assert proc["engine"]["events"] == len(events)
        assert "engine" not in send
        assert send["delivery"]["sent"] == len(want)


async def test_invalid_records_are_skipped_and_counted(cluster_factory: Any) -> None:
    """Records written to the topic past the HTTP edge: not JSON, a type that is not
    snake_case, a known type without its required property. Each is counted and skipped;
    the worker neither crashes nor loses the valid events around them."""
    stamp = iso(int(time.time() * 1000))
    bad = [
        b"{not json",
        orjson.dumps(
            {"event_id": "bad-1", "type": "Page Viewed", "customer_id": "c-bad", "timestamp": stamp}
        ),
        orjson.dumps(
            {
                "event_id": "bad-2",
                "type": "product_viewed",
                "customer_id": "c-bad",
                "timestamp": stamp,
                "properties": {"price": 3.0},
            }
        ),
    ]
    port = free_port()
    workers: dict[str, tuple[str, ...]] = {"w1": ("--metrics-port", str(port))}
    async with trace_through(cluster_factory, workers, 300, bad) as (c, hook, events, want):
        assert check(hook, want) == (0, 0, 0), c.log_tail("w1")
        m = await asyncio.to_thread(scrape, port)
        assert m["nudge_worker_events_undecodable_total"] == len(bad)
        assert m["nudge_events_processed_total"] == len(events)
        assert c.procs["w1"].poll() is None
