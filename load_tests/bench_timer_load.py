"""Benchmark: timer lateness while `nudge run`'s ingest is saturated (issue #18).

A real `nudge run` process gets ``--timers`` flows (a ``timer_probe`` event opens a flow
that waits one hour, then sends to a file sink), stamped so that their due times are
spread evenly over ``--window`` seconds a little after the load. Then, while they come
due, ``--flooders`` processes post batches of views as fast as they are answered (a
closed loop, 429s included): the ingest is saturated and the admission sheds. The figure
is the engine's own ``nudge_timer_lateness_seconds`` over the window (delta of the
histogram on ``/metrics``): p50/p99 interpolated in its buckets as Prometheus does, and
the exact share of timers that fired within 250 ms (a bucket bound).

The same run without the flood comes first (``--no-baseline`` skips it), on a fresh
engine: the difference is what saturation costs the timers.

    python -m load_tests.bench_timer_load --timers 100000 --window 10 --flooders 2

Pin the engine and the flood apart on a quiet machine for figures (``--engine-cpus 0
--flood-cpus 1``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from engine.types import iso
from load_tests.nudge_proc import start_nudge_run, wait_ready
from load_tests.report import bucket_quantile, histogram_delta, parse_histogram

__all__ = ["main"]

WRITE, ADMIN = "bench-write", "bench-admin"
RULE = (
    "id: probe\ntrigger: {event: timer_probe}\n"
    "steps:\n  - wait: 1h\n  - send: {channel: webhook, template: t}\n"
)
_H = 3_600_000
METRIC = "nudge_timer_lateness_seconds"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(base: str, events: list[dict[str, Any]]) -> int:
    req = urllib.request.Request(
        base + "/v1/events",
        data=orjson.dumps(events),
        headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _metrics(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        return str(r.read().decode())


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _flooder(base: str, stop_at: float, k: int, cpus: set[int] | None, out: Any) -> None:
    """Post batches of 500 views back to back until ``stop_at`` (wall clock)."""
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def run() -> tuple[int, int]:
        from aiohttp import ClientSession

        ok = refused = 0
        headers = {"Authorization": f"Bearer {WRITE}", "Content-Type": "application/json"}
        async with ClientSession() as session:

            async def lane(j: int) -> None:
                nonlocal ok, refused
                n = 0
                while time.time() < stop_at:
                    n += 1
                    stamp = iso(int(time.time() * 1000))
                    body = orjson.dumps(
                        [
                            {
                                "event_id": f"v{k}.{j}.{n}.{i}",
                                "type": "page_viewed",
                                "customer_id": f"v{(n * 500 + i) % 50_000}",
                                "timestamp": stamp,
                            }
                            for i in range(500)
                        ]
                    )
                    async with session.post(base + "/v1/events", data=body, headers=headers) as r:
                        await r.read()
                        if r.status == 202:
                            ok += 500
                        else:
                            refused += 500

            await asyncio.gather(*(lane(j) for j in range(8)))
        return ok, refused

    out.put(asyncio.run(run()))


def run_once(timers: int, window: float, flooders: int, opts: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="nudge-timer-load-"))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "probe.yaml").write_text(RULE)
    sinks = tmp / "sinks.json"
    sinks.write_bytes(
        orjson.dumps(
            {
                "default": "file",
                "sinks": {
                    "file": {"type": "jsonl", "path": str(tmp / "a.jsonl"), "fsync_every": 0}
                },
            }
        )
    )
    port = _free_port()
    log = tmp / "engine.log"
    extra = ("--synchronous", "NORMAL", *opts.engine_args)
    proc = start_nudge_run(
        tmp / "data", port, sinks, tokens=(WRITE, ADMIN), log=log, rules=tmp / "rules", extra=extra
    )
    if opts.engine_cpus:
        os.sched_setaffinity(proc.pid, opts.engine_cpus)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, proc, log)
        # the timers: due evenly over the window, starting after the load
        load_s = timers / 20_000 + 3
        first_due = int(time.time() * 1000) + int((load_s + opts.lead) * 1000)
        step = window * 1000 / timers
        t0 = time.monotonic()
        for start in range(0, timers, 1000):
            batch = [
                {
                    "event_id": f"t{i}",
                    "type": "timer_probe",
                    "customer_id": f"c{i}",
                    "timestamp": iso(first_due + int(i * step) - _H),
                }
                for i in range(start, min(start + 1000, timers))
            ]
            while _post(base, batch) == 429:
                time.sleep(0.05)
        while _gauge(_metrics(base), "nudge_queue_depth") > 0:
            time.sleep(0.1)
        loaded = time.monotonic() - t0
        ahead = first_due / 1000 - time.time()
        before = _metrics(base)
        results: Any = mp.get_context("fork").Queue()
        stop_at = first_due / 1000 + window + 2
        procs = [
            mp.get_context("fork").Process(
                target=_flooder, args=(base, stop_at, k, opts.flood_cpus, results), daemon=True
            )
            for k in range(flooders)
        ]
        flood_start = time.time()
        for p in procs:
            p.start()
        deadline = stop_at + opts.drain
        fired = 0.0
        while time.time() < deadline:
            fired = _gauge(_metrics(base), METRIC + "_count") - _gauge(before, METRIC + "_count")
            if fired >= timers and time.time() >= stop_at:
                break
            time.sleep(0.5)
        after = _metrics(base)
        flood = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    delta = histogram_delta(parse_histogram(before, METRIC), parse_histogram(after, METRIC))
    total = delta[-1][1] if delta else 0.0
    within = next((c for le, c in delta if le == 0.25), 0.0)
    q50, q99 = bucket_quantile(0.5, delta), bucket_quantile(0.99, delta)
    accepted = sum(ok for ok, _ in flood)
    # where a timer waits under saturation: the journal commit of the events accepted
    # around its due time (timers fire no later than an event accepted after them)
    commit = histogram_delta(
        parse_histogram(before, "nudge_journal_commit_seconds"),
        parse_histogram(after, "nudge_journal_commit_seconds"),
    )
    c50, c99 = bucket_quantile(0.5, commit), bucket_quantile(0.99, commit)
    return {
        "flooders": flooders,
        "timers": timers,
        "load_seconds": round(loaded, 1),
        "first_due_after_load_s": round(ahead, 2),
        "fired": int(total),
        "lateness_p50_ms": None if q50 is None else round(q50 * 1000, 1),
        "lateness_p99_ms": None if q99 is None else round(q99 * 1000, 1),
        "share_within_250ms": round(within / total, 4) if total else None,
        "flood_accepted_events_per_s": round(accepted / max(1e-9, stop_at - flood_start)),
        "flood_refused_events": sum(r for _, r in flood),
        "journal_commit_p50_ms": None if c50 is None else round(c50 * 1000, 1),
        "journal_commit_p99_ms": None if c99 is None else round(c99 * 1000, 1),
    }


def _cpus(text: str | None) -> set[int] | None:
    return {int(c) for c in text.split(",")} if text else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="timer lateness under a saturating ingest")
    p.add_argument("--timers", type=int, default=100_000)
    p.add_argument("--window", type=float, default=10.0, help="seconds the due times span")
    p.add_argument("--lead", type=float, default=3.0, help="seconds from load to first due")
    p.add_argument("--flooders", type=int, default=2, help="flood processes (8 lanes each)")
    p.add_argument("--drain", type=float, default=60.0, help="seconds to wait for stragglers")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without flood")
    p.add_argument("--engine-cpus", type=_cpus, help="pin nudge run, e.g. 0")
    p.add_argument("--flood-cpus", type=_cpus, help="pin the flood processes, e.g. 1")
    p.add_argument(
        "--engine-arg", dest="engine_args", action="append", default=[], help="nudge run flag"
    )
    args = p.parse_args(argv)
    out = {}
    if not args.no_baseline:
        out["no_flood"] = run_once(args.timers, args.window, 0, args)
        print(orjson.dumps(out["no_flood"]).decode(), file=sys.stderr)
    out["flood"] = run_once(args.timers, args.window, args.flooders, args)
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
