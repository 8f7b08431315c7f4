"""Benchmark: export a segment of ``--customers`` members over HTTP, end to end (issue 16:
1M customers in under 10 s).

Writes ``--customers`` checkpointed states, all members of segment ``vip`` (entered at
spread-out times), into a fresh data directory, starts the embedded runtime on it (the
recovery builds the segment index from the states: timed too), serves the API on loopback
(uvloop, as ``nudge run``), and downloads ``/v1/segments/vip/members.ndjson`` (and
``.csv``) with curl in another process: request to last byte. Meanwhile a ticker on the
engine's loop records the longest stall (the export is written in chunks so the loop
keeps serving). Prints one JSON object; the figures go to BENCHMARKS.md by hand.

    python -m load_tests.bench_segment_export --customers 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from engine.embedded.runtime import Runtime, RuntimeConfig
from engine.embedded.storage.sqlite import SqliteStore
from engine.http.app import create_app
from engine.http.auth import Tokens
from engine.metrics import Metrics
from state.customer import CustomerState, pack

__all__ = ["main"]

NOW = 1_790_000_000_000
DAY = 86_400_000
RULES = """
kind: segment
id: vip
description: lifetime value of 500 or more
condition: "customer.ltv >= 500.0"
---
id: hello
trigger: {event: page_viewed}
steps:
  - send: {channel: webhook, template: hi}
"""


def write_states(data: Path, n: int, partitions: int) -> float:
    """``n`` checkpointed states, each a member of ``vip``; returns the seconds taken."""
    t0 = time.perf_counter()
    store = SqliteStore(data, "NORMAL")
    try:
        chunk: list[tuple[str, bytes]] = []
        for i in range(n):
            at = NOW - (i * 7919) % (90 * DAY)
            st = CustomerState(f"customer-{i:08d}", at - DAY, at, orders=1, revenue=600.0)
            st.last_order = st.first_order = at
            st.segments = {"vip": at}
            chunk.append((st.customer_id, pack(st)))
            if len(chunk) == 50_000:
                store.write_states(chunk)
                chunk = []
        store.checkpoint(chunk, [], dict.fromkeys(range(partitions), 0), [])
    finally:
        store.close()
    return time.perf_counter() - t0


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """The longest gap beyond 10 ms between two 10 ms sleeps on the engine's loop."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)
        stalls.append(time.perf_counter() - t0 - 0.01)


async def _curl(url: str, token: str, target: Path, stalls: list[float]) -> tuple[float, int]:
    """Download ``url`` with curl: seconds from spawning it to its exit, and bytes. The
    ticker (``stalls``) runs once curl is spawned (forking this process is not the
    export's stall)."""
    stop = asyncio.Event()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--fail",
        "-H",
        f"Authorization: Bearer {token}",
        "-o",
        str(target),
        url,
    )
    ticker = asyncio.create_task(_ticker(stalls, stop))
    code = await proc.wait()
    seconds = time.perf_counter() - t0
    stop.set()
    await ticker
    if code != 0:
        raise RuntimeError(f"curl {url} failed")
    return seconds, target.stat().st_size


async def run(n: int, partitions: int, formats: Sequence[str], port: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-export-"))
    try:
        rules = tmp / "rules"
        rules.mkdir()
        (rules / "vip.yaml").write_text(RULES, encoding="utf-8")
        data = tmp / "data"
        data.mkdir()
        report: dict[str, Any] = {"customers": n}
        report["write_states_s"] = round(write_states(data, n, partitions), 2)
        metrics = Metrics()
        cfg = RuntimeConfig(
            data_dir=data,
            rules=[str(rules)],
            partitions=partitions,
            synchronous="NORMAL",
            checkpoint_interval=3600.0,
            checkpoint_mode="inline",
            sinks={"default": "log"},
        )
        runtime = Runtime(cfg, metrics)
        t0 = time.perf_counter()
        await runtime.start()
        report["start_with_recovery_s"] = round(time.perf_counter() - t0, 2)
        assert runtime.segment_index is not None
        report["index_size"] = runtime.segment_index.sizes()["vip"]
        tokens, _, _ = Tokens.load_or_create(data)
        runner = web.AppRunner(create_app(runtime, tokens, metrics))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            for fmt in formats:
                stalls: list[float] = []
                target = tmp / f"vip.{fmt}"
                url = f"http://127.0.0.1:{port}/v1/segments/vip/members.{fmt}"
                seconds, size = await _curl(url, tokens.admin, target, stalls)
                with target.open("rb") as fh:
                    lines = sum(1 for _ in fh) - (fmt == "csv")
                report[fmt] = {
                    "members": lines,
                    "seconds": round(seconds, 2),
                    "members_per_s": round(lines / seconds),
                    "mb": round(size / 1e6, 1),
                    "loop_max_stall_ms": round(max(stalls, default=0.0) * 1000, 1),
                }
                target.unlink()
        finally:
            await runner.cleanup()
            await runtime.stop()
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--formats", nargs="+", choices=["ndjson", "csv"], default=["ndjson", "csv"])
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    port = args.port or _free_port()
    coro = run(args.customers, args.partitions, args.formats, port)
    if args.no_uvloop:
        report = asyncio.run(coro)
    else:
        import uvloop

        report = uvloop.run(coro)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if all(report[f]["members"] == args.customers for f in args.formats) else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
