"""Analytics exactness through ``kill -9``: a `nudge run` subprocess is killed once while a
checkpoint writer is between its steps (states newer than the stored positions) and once
anywhere; after recovery the report's counts equal the actions the webhook received and
the counts of an in-process partition that processed the same accepted events once."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from engine.events import decode_event
from engine.partition import Partition
from rules.ruleset import load_ruleset
from tests.engine.embedded.test_crash import ADMIN, Engine
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.slow

EXPERIMENT = """\
id: viewed-exp
trigger: {event: product_viewed}
reentry: once
steps:
  - send: {channel: webhook, template: exp}
experiment:
  variants: {a: 40, b: 40}
  holdout: 20
  goal: {event: order_completed, within: 1d}
"""


def reference(rules: Path, accepted: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """rule -> metric -> count, from one partition processing every event once."""
    import orjson

    part = Partition(0, load_ruleset([str(rules)]), lambda out: None, analytics=True)
    for seq, e in enumerate(accepted, 1):
        ev = decode_event(orjson.dumps(e))
        part.apply(seq, ev.ts, ev)
    part.fire_until(2**62)
    assert part.tally is not None
    out: dict[str, Counter[str]] = {}
    for (rid, _, _, _, metric, _), n in part.tally.totals().items():
        out.setdefault(rid, Counter())[metric.split(":")[0]] += n
    return out


async def report(session: ClientSession, port: int) -> dict[str, dict[str, Any]]:
    today = datetime.now(UTC).date()
    q = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"
    async with session.get(
        f"http://127.0.0.1:{port}/v1/reports/rules?{q}",
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as r:
        assert r.status == 200, await r.text()
        return {row["rule_id"]: row for row in (await r.json())["rules"]}


async def test_report_exact_after_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUDGE_CHECKPOINT_INTERVAL", "0.25")
    monkeypatch.setenv("NUDGE_CHECKPOINT_STEP", "1")  # a step per spool frame
    monkeypatch.setenv("NUDGE_CHECKPOINT_STEP_PAUSE_MS", "30")
    monkeypatch.setenv("NUDGE_LOG_LEVEL", "DEBUG")
    hook = WebhookReceiver()
    await hook.start()
    engine = Engine(tmp_path, hook.url)
    (engine.rules / "experiment.yaml").write_text(EXPERIMENT)
    events = make_events(2400, int(time.time() * 1000) - 60_000, customers=211)
    batches = [events[i : i + 50] for i in range(0, len(events), 50)]
    accepted: list[dict[str, Any]] = []
    kills: list[int] = []
    second = len(batches)
    engine.start()
    try:
        async with ClientSession() as session:
            await engine.ready(session)
            for i, batch in enumerate(batches):
                first = not kills and i >= 10 and engine.writer_mid_steps()
                if first:
                    second = i + 10
                kill = first or i == second
                await engine.deliver(session, batch, kill)
                if kill:
                    kills.append(i)
                accepted += batch
                await asyncio.sleep(0.03)
            want = reference(engine.rules, accepted)
            end = time.monotonic() + 30
            while time.monotonic() < end:  # timers fire, the outbox drains
                got = await report(session, engine.port)
                if len(set(hook.keys())) == sum(r["sends"] for r in got.values()) and all(
                    got[rid]["sends"] == want[rid]["sent"] for rid in want
                ):
                    break
                await asyncio.sleep(0.2)
    finally:
        engine.stop()
        await hook.stop()
    print(f"kills at batches {kills}; report {got}")
    assert len(kills) == 2
    assert sum(r["sends"] for r in got.values()) == len(set(hook.keys()))  # the action log
    for rid, metrics in want.items():
        row = got[rid]
        assert row["entered"] == metrics["entered"], rid
        assert row["sends"] == metrics["sent"], rid
        assert row["holdout"] == metrics["holdout"], rid
        assert row["conversions"] == metrics["conversions"], rid
        assert row["revenue"] == metrics["revenue_cents"] / 100, rid
    assert want["viewed-exp"]["conversions"] > 0
    assert want["viewed-exp"]["holdout"] > 0
    assert os.environ["NUDGE_CHECKPOINT_STEP"] == "1"
