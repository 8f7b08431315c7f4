"""Benchmark: one million pending timers in the embedded runtime, and how late they fire.

Runs the embedded runtime in this process on the real clock with one rule: a
`timer_probe` event opens a flow that waits one hour, then sends. The events are stamped so
the one million due times are spread evenly over ``--spread`` seconds starting
``--lead`` seconds after the load finishes. Reports resident memory per pending timer
(customer state included: a timer belongs to an open flow of a customer) and the exact
fire lateness (wall clock at firing minus due time) percentiles.

    python -m load_tests.bench_timers --timers 1000000 --spread 60
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from engine.embedded.runtime import Runtime, RuntimeConfig
from engine.events import decode_event
from engine.metrics import Metrics
from engine.output import Output
from engine.types import iso

__all__ = ["main"]

RULE = (
    "id: probe\ntrigger: {event: timer_probe}\n"
    "steps:\n  - wait: 1h\n  - send: {channel: webhook, template: t}\n"
)
_H = 3_600_000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(timers: int, spread_s: float, lead_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="nudge-timers-"))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "probe.yaml").write_text(RULE)
    sinks = {
        "default": "file",
        "sinks": {"file": {"type": "jsonl", "path": str(tmp / "a.jsonl"), "fsync_every": 0}},
    }
    cfg = RuntimeConfig(
        data_dir=tmp / "data",
        rules=[str(tmp / "rules")],
        sinks=sinks,
        synchronous="NORMAL",
        compact_idle_s=30.0,
    )
    rt = Runtime(cfg, Metrics())
    await rt.start()
    lateness: list[int] = []

    def observe(out: Output) -> None:
        if out.timer_due is not None and out.actions:
            lateness.append(rt.clock.now() - out.timer_due)

    rt.observers.append(observe)
    rss0 = _rss_mb()
    load_s = timers / 25_000  # rough time to load, so the first timer is still ahead
    first_due = rt.clock.now() + int((load_s + lead_s) * 1000)
    step = spread_s * 1000 / timers
    t0 = time.monotonic()
    for start in range(0, timers, 1000):
        events = []
        raws = []
        for i in range(start, min(start + 1000, timers)):
            due = first_due + int(i * step)
            raw = orjson.dumps(
                {
                    "event_id": f"t{i}",
                    "type": "timer_probe",
                    "customer_id": f"c{i}",
                    "timestamp": iso(due - _H),
                }
            )
            raws.append(raw)
            events.append(decode_event(raw))
        await rt.accept((events, b"[" + b",".join(raws) + b"]"))
    while rt.queued:
        await asyncio.sleep(0.05)
    loaded_s = time.monotonic() - t0
    pending = sum(len(p.timers) for p in rt.parts)
    rss1 = _rss_mb()
    late_start = first_due - rt.clock.now()
    end = time.monotonic() + spread_s + lead_s + load_s + 120
    while len(lateness) < timers and time.monotonic() < end:
        await asyncio.sleep(0.5)
    await rt.stop()
    lat = sorted(lateness)

    def pct(p: float) -> float:
        return float(lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else -1.0

    return {
        "timers": timers,
        "pending_after_load": pending,
        "load_seconds": round(loaded_s, 1),
        "first_due_after_load_ms": late_start,
        "fired": len(lat),
        "rss_mb_before": round(rss0),
        "rss_mb_loaded": round(rss1),
        "bytes_per_pending_timer_incl_customer": round((rss1 - rss0) * 1024 * 1024 / timers),
        "lateness_ms_p50": pct(0.5),
        "lateness_ms_p99": pct(0.99),
        "lateness_ms_p999": pct(0.999),
        "lateness_ms_max": float(lat[-1]) if lat else -1.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="1M pending timers: lateness and memory")
    p.add_argument("--timers", type=int, default=1_000_000)
    p.add_argument("--spread", type=float, default=60.0, help="seconds the due times span")
    p.add_argument("--lead", type=float, default=20.0, help="seconds before the first is due")
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(run(args.timers, args.spread, args.lead))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
