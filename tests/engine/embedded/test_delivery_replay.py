"""`nudge deadletter replay` against a running `nudge run` (issue 19): the engine takes
the letters back into its outbox, delivers them, and its gauges stay true."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.engine.embedded.test_delivery_restart import (
    RULES,
    SECRET,
    Engine,
    OutageReceiver,
    until,
)
from tests.support.traces import make_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUDGE_TEST_HOOK_SECRET", SECRET)


def deadletter(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "engine.cli", "deadletter", *args, "--data", str(data)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


async def test_replay_goes_through_the_running_engine(tmp_path: Path) -> None:
    hook = OutageReceiver(down_status=404)  # refused for good: dead letters, no retry
    await hook.start()
    engine = Engine(tmp_path, hook.port, RULES)
    events = make_events(40, int(time.time() * 1000) - 1_000)  # 10 orders, 10 views
    try:
        await engine.start()
        async with ClientSession() as session:
            await engine.post(session, events)

            async def dead() -> float:
                return await engine.metric(session, "nudge_dead_letters ")

            end = time.monotonic() + 30
            while await dead() < 20 and time.monotonic() < end:
                await asyncio.sleep(0.1)
            assert await dead() == 20
            assert hook.attempts_down == 20  # a 404 is not retried
            listed = deadletter(engine.data, "list")
            assert listed.stdout.count('"reason":"rejected"') == 20

            hook.down = False  # the receiver is fixed
            done = await asyncio.to_thread(deadletter, engine.data, "replay")
            assert done.returncode == 0, done.stderr
            assert '"taken_by_engine":20' in done.stdout
            await until(lambda: len(hook.deliveries) >= 20, "the replayed deliveries")
            assert await dead() == 0  # the running engine's gauge, not only the file
            delivered = await engine.metric(session, "nudge_actions_total{channel=")
    finally:
        engine.stop()
        await hook.stop()
    keys = hook.keys()
    assert len(keys) == len(set(keys)) == 20
    assert delivered >= 20
