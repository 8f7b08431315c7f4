"""``nudge deadletter list|replay --broker``: the letters a worker dead-lettered go back
through the workers once the sink works again, each delivered once, however often the
replay runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from tests.distributed.conftest import ROOT, Cluster, expected_keys, produce
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def _deadletter(c: Cluster, action: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "engine.cli", "deadletter", action, "--broker", c.kafka.url]
    cmd += ["--redis", c.redis_url, "--app-id", c.app_id, "--actions-topic", c.actions_topic]
    cmd += ["--redis-prefix", c.prefix, *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)


async def _until(what: str, check: Any, c: Cluster, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert c.procs["w1"].poll() is None, c.log_tail("w1")
        assert time.monotonic() < end, f"timed out: {what}\n{c.log_tail('w1')}"
        await asyncio.sleep(0.2)


async def test_replay_sends_each_dead_letter_once(cluster_factory: Any) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        hook_sink = {"type": "webhook", "url": hook.url, "max_attempts": 1}
        c.sinks_file.write_bytes(orjson.dumps({"default": "hook", "sinks": {"hook": hook_sink}}))
        events = make_events(80, int(time.time() * 1000) - 30_000)
        events = [e for e in events if e["type"] in ("order_completed", "product_viewed")]
        want = expected_keys(c.rules_dir, events)
        assert len(want) == len(events)
        hook.fail_next = 10**9  # the sink is down: every action is dead-lettered
        await produce(c.kafka.bootstrap, c.events_topic, list(events))
        c.start_worker("w1")

        def dead() -> int:
            return int(c.stats("w1").get("delivery", {}).get("dead", 0))

        await _until("every action dead-lettered", lambda: dead() == len(want), c)
        assert hook.deliveries == []

        listed = _deadletter(c, "list", "--limit", "1000")
        assert listed.returncode == 0, listed.stderr
        rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
        assert {r["action"]["idempotency_key"] for r in rows} == want
        assert all("500" in r["error"] for r in rows), rows[0]

        hook.fail_next = 0  # the sink is back
        first = _deadletter(c, "replay")
        assert first.returncode == 0, first.stderr
        assert orjson.loads(first.stdout) == {"replayed": len(want), "skipped": 0, "undecodable": 0}
        await _until("the replayed actions delivered", lambda: set(hook.keys()) == want, c)

        again = _deadletter(c, "replay")  # nothing pending: the offsets were committed
        assert orjson.loads(again.stdout) == {"replayed": 0, "skipped": 0, "undecodable": 0}
        # another consumer group reads every letter again: the Redis keys say sent
        other = _deadletter(c, "replay", "--app-id", c.app_id + "-other")
        assert orjson.loads(other.stdout)["skipped"] == len(want), other.stderr
        assert _deadletter(c, "list").stdout == ""
        await asyncio.sleep(2.0)  # a duplicate would arrive now
        assert sorted(hook.keys()) == sorted(want)
    finally:
        await hook.stop()
