"""Nudge's distributed runtime on the peers' trace: ``nudge worker`` consuming the same
topic on the same broker, running the same recipe (abandoned cart, with the stock
settings), so the side-by-side comparison gives ratios from one run.

Contract: :func:`run_nudge_worker` starts a Redis (``tests/support/servers.start_redis``)
and one ``nudge worker`` subprocess on ``topic`` (its actions to a JSONL sink), polls the
worker's stats file every ``poll`` seconds until it has processed ``expected`` events,
stops it with SIGTERM and returns the figures:

- ``events_per_second``: ``expected`` / (first poll that saw the last event - last poll
  that saw none), so the figure is within one poll interval (``poll_s``) of the truth on
  each side and is reported with it; measured like the peers, from consumption to the
  last event processed, start-up and group join excluded;
- ``core_events_per_second``: events / the worker's own processing seconds.

Time: the worker's processing time is each event's Kafka timestamp (acceptance time), as in
production; the peers run on event time. The trace is stamped from the moment it is
generated, so events ahead of the worker's clock are processed at that clock
(``future_tolerance``, docs/semantics.md) and no 4 h wait comes due during the run: this
module measures throughput, not the number of emails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from load_tests.bench_worker import stats

__all__ = ["run_nudge_worker"]

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "rules" / "recipes"


def run_nudge_worker(
    bootstrap: str,
    topic: str,
    expected: int,
    partitions: int,
    tmp: Path,
    timeout: float = 600.0,
    poll: float = 0.05,
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.support.servers import start_redis

    rules = tmp / "nudge-rules"
    rules.mkdir()
    for name in ("abandoned_cart.yaml", "settings.yaml"):
        shutil.copy(RECIPES / name, rules / name)
    sinks = tmp / "nudge-sinks.json"
    actions = tmp / "nudge-actions.jsonl"
    sinks.write_bytes(
        orjson.dumps(
            {"default": "file", "sinks": {"file": {"type": "jsonl", "path": str(actions)}}}
        )
    )
    stats_file = tmp / "nudge-stats.json"
    redis = start_redis()
    app_id = f"peer-nudge-{uuid.uuid4().hex[:8]}"
    cmd = [
        *(sys.executable, "-m", "engine.cli", "worker", "--broker", f"kafka://{bootstrap}"),
        *("--redis", redis.url, "--app-id", app_id, "--partitions", str(partitions)),
        *("--events-topic", topic, "--actions-topic", f"{topic}-actions"),
        *("--rules", str(rules), "--sinks", str(sinks)),
        *("--stats-file", str(stats_file), "--stats-interval", str(poll)),
    ]
    log_path = tmp / "nudge-worker.log"
    started = time.monotonic()
    last_zero = first_done = None
    final: dict[str, Any] | None = None
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
            try:
                while time.monotonic() - started < timeout and proc.poll() is None:
                    time.sleep(poll)
                    doc = stats(stats_file)
                    engine = doc.get("engine") or {}
                    done = int(engine.get("events", 0)) + int(engine.get("undecodable", 0))
                    now = time.monotonic()
                    if done == 0:
                        last_zero = now
                    elif done >= expected:
                        first_done, final = now, doc
                        break
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        redis.stop()
    if final is None or first_done is None or last_zero is None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"nudge worker did not process {expected} events; log tail:\n{tail}")
    engine = final["engine"]
    seconds = max(first_done - last_zero, 1e-9)
    core = float(engine.get("processing_seconds", 0.0))
    lines = actions.read_bytes().splitlines() if actions.exists() else []
    return {
        "processed": int(engine["events"]),
        "events_per_second": round(expected / seconds),
        "poll_s": poll,
        "core_events_per_second": round(int(engine["events"]) / core) if core else None,
        "actions_sent": len(lines),
        "wall_seconds_incl_startup": round(first_done - started, 2),
        "exit_code": proc.returncode,
    }
