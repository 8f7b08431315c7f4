"""Crash safety: a `nudge run` subprocess is SIGKILLed mid-stream twice, restarted, and the
actions at the webhook equal what the core computes over the accepted events: none lost,
none extra. Redeliveries (an action delivered just before a kill whose "sent" mark was not
committed) carry the same Idempotency-Key; the receiver applies each key once, as real
providers do, and the test reports how many there were."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientError, ClientSession

from engine.backtest import backtest
from load_tests.nudge_proc import start_nudge_run, wait_ready
from rules.ruleset import load_ruleset
from tests.support.traces import TIMING_FREE_RULES, make_events
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.slow

RULES = TIMING_FREE_RULES
WRITE = "test-write-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    def __init__(self, tmp: Path, hook_url: str) -> None:
        self.data = tmp / "data"
        self.rules = tmp / "rules"
        self.rules.mkdir()
        for name, text in RULES.items():
            (self.rules / name).write_text(text)
        self.sinks = tmp / "sinks.yaml"
        self.sinks.write_text(
            orjson.dumps(
                {"default": "hook", "sinks": {"hook": {"type": "webhook", "url": hook_url}}}
            ).decode()
        )
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "engine.log"

    def start(self) -> None:
        self.proc = start_nudge_run(
            self.data,
            self.port,
            self.sinks,
            tokens=(WRITE, "test-admin"),
            log=self.log,
            rules=self.rules,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    async def ready(self, session: ClientSession) -> None:
        assert self.proc is not None
        await asyncio.to_thread(wait_ready, self.port, self.proc, self.log, 30.0)

    async def send(self, session: ClientSession, batch: list[dict[str, Any]]) -> bool:
        try:
            async with session.post(
                f"http://127.0.0.1:{self.port}/v1/events",
                data=orjson.dumps(batch),
                headers={"Authorization": f"Bearer {WRITE}"},
            ) as r:
                return r.status == 202
        except (TimeoutError, ClientError):
            return False


async def test_sigkill_twice_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checkpoints every 0.25 s: kills land while a forked child writes one, too
    monkeypatch.setenv(
        "NUDGE_CHECKPOINT_INTERVAL", os.environ.get("NUDGE_CRASH_CHECKPOINT", "0.25")
    )
    hook = WebhookReceiver()
    await hook.start()
    engine = Engine(tmp_path, hook.url)
    events = make_events(2400, int(time.time() * 1000) - 60_000)
    batches = [events[i : i + 50] for i in range(0, len(events), 50)]
    kill_at = {int(k) for k in os.environ.get("NUDGE_CRASH_KILLS", "15,31").split(",") if k}
    accepted: list[dict[str, Any]] = []
    engine.start()
    try:
        async with ClientSession() as session:
            await engine.ready(session)
            for i, batch in enumerate(batches):
                if i in kill_at:  # kill while this batch is in flight
                    task = asyncio.create_task(engine.send(session, batch))
                    await asyncio.sleep(0.002)
                    engine.kill()
                    acked = await task
                    engine.start()
                    await engine.ready(session)
                    if acked:
                        accepted += batch
                        continue
                while not await engine.send(session, batch):  # retry until acknowledged
                    await asyncio.sleep(0.05)
                accepted += batch
            # let the 1s timers fire and the outbox drain
            expected_keys = {
                a.idempotency_key
                for a in backtest(
                    load_ruleset([str(engine.rules)]), [orjson.dumps(e) for e in accepted]
                ).actions
            }
            end = time.monotonic() + 30
            while set(hook.keys()) != expected_keys and time.monotonic() < end:
                await asyncio.sleep(0.1)
    finally:
        engine.stop()
        await hook.stop()
    got = hook.keys()
    missing = expected_keys - set(got)
    extra = set(got) - expected_keys
    redelivered = len(got) - len(set(got))
    print(
        f"expected={len(expected_keys)} delivered={len(got)} unique={len(set(got))} "
        f"missing={len(missing)} extra={len(extra)} redelivered={redelivered}"
    )
    assert not missing
    assert not extra
    assert len(expected_keys) > 1000
