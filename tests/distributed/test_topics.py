"""Topics on a fresh cluster: the workers (and ``nudge topics ensure``, the step the
compose and Kubernetes kits run first) create every topic they need, so the first
events act at once; a topic with another partition count stops a worker at start with
one line."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from tests.distributed.conftest import ROOT, Cluster, expected_keys
from tests.support.fixtures import KafkaTopicFactory, run_coro
from tests.support.servers import KafkaServer, free_port
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

WRITE, ADMIN = "topics-write-token", "topics-admin-token"


def _nudge(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def _partitions(bootstrap: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()


async def _delete(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        have = set(await admin.list_topics())
        await admin.delete_topics([n for n in names if n in have])
    finally:
        await admin.close()


async def test_fresh_cluster_acts_within_seconds(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No topic of the deployment exists: the ingest and two workers start as the
    compose file runs them, events are posted as soon as the ingest accepts, and every
    expected action is delivered within a minute (before, the group got the ``events``
    partitions only at the next metadata refresh, ~5 minutes)."""
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    tag = uuid.uuid4().hex[:8]
    c: Cluster = dataclasses.replace(
        cluster_factory(hook.url),
        events_topic=f"fresh-events-{tag}",
        actions_topic=f"fresh-actions-{tag}",
    )
    names = [c.events_topic, c.actions_topic, f"{c.actions_topic}-dead", f"{c.app_id}-segments"]
    try:
        assert not set(names) & set(await _partitions(c.kafka.bootstrap))
        port = free_port()
        c.start_worker("ingest", "--http-port", str(port), "--data", str(c.tmp / "ingest"))
        c.start_worker("w1")
        c.start_worker("w2")
        events = make_events(200, int(time.time() * 1000) - 30_000, prefix=f"f{tag}")
        want = expected_keys(c.rules_dir, events)
        url = f"http://127.0.0.1:{port}/v1/events"
        auth = {"Authorization": f"Bearer {WRITE}"}
        async with ClientSession() as session:
            deadline = time.monotonic() + 90
            while True:  # post at once: as soon as the ingest accepts
                for name, proc in c.procs.items():
                    assert proc.poll() is None, f"{name} exited:\n{c.log_tail(name)}"
                try:
                    async with session.post(url, json=events, headers=auth) as r:
                        if r.status == 202:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, c.log_tail("ingest")
                await asyncio.sleep(0.1)
        accepted = time.monotonic()
        while {d.key for d in hook.deliveries} < want:
            waited = time.monotonic() - accepted
            assert waited < 60, (
                f"{len({d.key for d in hook.deliveries} & want)}/{len(want)} actions after "
                f"{waited:.0f}s\n{c.log_tail('w1')}"
            )
            await asyncio.sleep(0.1)
        first = time.monotonic() - accepted
        print(f"all {len(want)} actions {first:.1f}s after the events were accepted")
        layout = await _partitions(c.kafka.bootstrap)
        assert {n: layout.get(n) for n in names} == dict.fromkeys(names, c.partitions)
    finally:
        c.stop_all()
        await hook.stop()
        await _delete(c.kafka.bootstrap, names)


def test_wrong_partition_count_refused_in_one_line(
    kafka_server: KafkaServer,
    kafka_topic_factory: KafkaTopicFactory,
    tmp_path: Path,
) -> None:
    """An events topic with 2 partitions, workers configured for 4: the worker and
    ``nudge topics ensure`` exit 1 with one line naming the topic and both counts, and
    create nothing; with the right count ``topics ensure`` creates the rest, twice
    harmlessly."""
    events = kafka_topic_factory("events", partitions=2)
    tag = uuid.uuid4().hex[:8]
    actions, app_id = f"actions-{tag}", f"app-{tag}"
    common = ["--broker", kafka_server.url, "--app-id", app_id, "--events-topic", events]
    common += ["--actions-topic", actions]
    wanted = f"topic '{events}' has 2 partitions, --partitions is 4"

    worker = _nudge("worker", *common, "--partitions", "4", "--redis", "redis://127.0.0.1:1/0")
    assert worker.returncode == 1, worker.stderr
    assert worker.stderr.strip().splitlines() == [f"nudge worker: {wanted}: " + _HINT], (
        worker.stderr
    )

    ensure = _nudge("topics", "ensure", *common, "--partitions", "4")
    assert ensure.returncode == 1
    assert ensure.stderr.strip().splitlines() == [f"nudge topics ensure: {wanted}: " + _HINT]
    assert actions not in run_coro(lambda: _partitions(kafka_server.bootstrap))

    made = [actions, f"{actions}-dead", f"{app_id}-segments"]
    try:
        for _ in range(2):
            ok = _nudge("topics", "ensure", *common, "--partitions", "2")
            assert ok.returncode == 0, ok.stderr
        layout = run_coro(lambda: _partitions(kafka_server.bootstrap))
        assert {n: layout.get(n) for n in made} == dict.fromkeys(made, 2)
    finally:
        run_coro(lambda: _delete(kafka_server.bootstrap, made))


_HINT = "use --partitions 2, or a new topic / app id (keys cannot move partitions)"
