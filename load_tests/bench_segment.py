"""Benchmark: Segment-format ingest against native ingest, on one real `nudge run`.

The same traffic (half page views, product views, cart adds, over many customers) in
batches of N, as the native envelope to ``/v1/events`` (bearer token) and as Segment
messages to ``/v1/batch`` (basic auth with the write key, the members a Segment client
sends: ``context.library``, ``integrations``, ``messageId``, ``timestamp``), in rounds
A B A B ... on the same engine, so a slow spell of the host shows in both. Each round
posts on C connections for S seconds, each batch as soon as the last was acknowledged,
then waits until the engine has processed everything. Per round it prints the
acknowledged events/s and the sustained events/s (events / time until drained); at the
end the medians per format and their ratio (target: Segment >= 0.8 of native).

Bodies are built before the rounds (the benchmark shares the cores with the engine) and
stamped with a sequence number per request, so every event id is new.

    python -m load_tests.bench_segment --seconds 10 --rounds 3 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector

from load_tests.bench_ingest import _drained, _iso, _port
from load_tests.nudge_proc import start_nudge_run, wait_ready

__all__ = ["main", "native_body", "segment_body"]

TOKEN = "bench-write"
_SEQ = "@@SEQ@@"  # where a request's sequence number goes in a prebuilt body
_LIBRARY = {"name": "analytics-python", "version": "2.4.0"}


def _kind(n: int, customers: int) -> tuple[str, str, dict[str, Any]]:
    """(customer, Nudge type, properties) of event ``n`` of the traffic (bench_ingest's mix)."""
    k = n % 10
    cid = f"c{n % customers}"
    if k < 5:
        return cid, "page_viewed", {"url": "/"}
    if k < 8:
        return cid, "product_viewed", {"product_id": f"p{n % 300}"}
    return cid, "cart_item_added", {"product_id": f"p{n % 300}", "price": 20.0}


def native_body(template: int, size: int, customers: int, stamp: str) -> bytes:
    """A /v1/events body of ``size`` events, ids waiting for their request's number."""
    events = []
    for i in range(size):
        cid, etype, props = _kind(template * size + i, customers)
        events.append(
            {
                "event_id": f"{_SEQ}-{i}",
                "type": etype,
                "customer_id": cid,
                "timestamp": stamp,
                "properties": props,
            }
        )
    return orjson.dumps(events)


_SEGMENT = {"page_viewed": ("page", None), "product_viewed": ("track", "Product Viewed")}


def segment_body(template: int, size: int, customers: int, stamp: str) -> bytes:
    """The same events as :func:`native_body`, as a Segment ``/v1/batch`` body."""
    batch = []
    for i in range(size):
        cid, etype, props = _kind(template * size + i, customers)
        kind, name = _SEGMENT.get(etype, ("track", "Product Added"))
        msg: dict[str, Any] = {
            "integrations": {},
            "properties": props,
            "timestamp": stamp,
            "context": {"library": _LIBRARY},
            "userId": cid,
            "type": kind,
            "messageId": f"{_SEQ}-{i}",
        }
        if name is not None:
            msg["event"] = name
        batch.append(msg)
    return orjson.dumps({"batch": batch, "sentAt": stamp})


class _Bodies:
    """Prebuilt bodies split where the request's number goes; ``body(seq)`` joins one."""

    def __init__(self, build: Any, templates: int, size: int, customers: int) -> None:
        stamp = _iso(int(time.time() * 1000))
        self._split = [
            build(t, size, customers, stamp).split(_SEQ.encode()) for t in range(templates)
        ]

    def body(self, seq: int) -> bytes:
        return f"r{seq}".encode().join(self._split[seq % len(self._split)])


async def _round(
    url: str,
    headers: dict[str, str],
    ok: int,
    bodies: _Bodies,
    first_seq: int,
    size: int,
    seconds: float,
    conns: int,
    metrics_url: str,
) -> tuple[int, float, float, int]:
    """Post for ``seconds``; returns (events acknowledged, acknowledged/s, sustained/s,
    next sequence number)."""
    acked = 0
    seq = first_seq
    refused = 0
    t0 = time.monotonic()
    stop = t0 + seconds

    async def worker(session: ClientSession) -> None:
        nonlocal acked, seq, refused
        while time.monotonic() < stop:
            seq += 1
            async with session.post(url, data=bodies.body(seq), headers=headers) as r:
                await r.read()
                if r.status == ok:
                    acked += size
                elif r.status == 429:
                    await asyncio.sleep(0.05)
                else:
                    refused += 1

    async with ClientSession(connector=TCPConnector(limit=conns)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))
    posted = time.monotonic() - t0
    await _drained(metrics_url)
    drained = time.monotonic() - t0
    if refused:
        raise RuntimeError(f"{url}: {refused} requests refused (not 2xx/429)")
    return acked, acked / posted, acked / drained, seq


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-segment-"))
    sinks = tmp / "sinks.json"
    sinks.write_bytes(
        orjson.dumps(
            {"default": "file", "sinks": {"file": {"type": "jsonl", "path": str(tmp / "a.jsonl")}}}
        )
    )
    port = _port()
    proc = start_nudge_run(
        tmp / "data",
        port,
        sinks,
        tokens=(TOKEN, "bench-admin"),
        log=args.engine_log,
        extra=("--synchronous", args.synchronous),
    )
    base = f"http://127.0.0.1:{port}"
    templates = 64
    modes = {
        "native": (
            f"{base}/v1/events",
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            202,
            _Bodies(native_body, templates, args.batch, args.customers),
        ),
        "segment": (
            f"{base}/v1/batch",
            {
                "Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(),
                "Content-Type": "application/json",
            },
            200,
            _Bodies(segment_body, templates, args.batch, args.customers),
        ),
    }
    rounds: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    seq = 0
    total = 0
    try:
        await asyncio.to_thread(wait_ready, port, proc, args.engine_log)
        for r in range(args.rounds):
            for mode, (url, headers, ok, bodies) in modes.items():
                acked, rate, sustained, seq = await _round(
                    url,
                    headers,
                    ok,
                    bodies,
                    seq,
                    args.batch,
                    args.seconds,
                    args.connections,
                    f"{base}/metrics",
                )
                total += acked
                rounds[mode].append((rate, sustained))
                print(
                    f"round {r + 1} {mode:7s} acknowledged {rate:9.0f} events/s  "
                    f"sustained {sustained:9.0f} events/s",
                    file=sys.stderr,
                    flush=True,
                )
        processed = await _drained(f"{base}/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {
        m: (statistics.median(a for a, _ in v), statistics.median(s for _, s in v))
        for m, v in rounds.items()
    }
    return {
        "batch": args.batch,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
        "native_acknowledged_events_per_s": round(med["native"][0]),
        "segment_acknowledged_events_per_s": round(med["segment"][0]),
        "native_sustained_events_per_s": round(med["native"][1]),
        "segment_sustained_events_per_s": round(med["segment"][1]),
        "ratio_acknowledged": round(med["segment"][0] / med["native"][0], 3),
        "ratio_sustained": round(med["segment"][1] / med["native"][1], 3),
        "events_acknowledged": total,
        "events_processed": round(processed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10, help="length of each round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per format (A B A B ...)")
    p.add_argument("--batch", type=int, default=100, help="events per request")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--synchronous", default="NORMAL", choices=["FULL", "NORMAL"])
    p.add_argument(
        "--engine-log", type=Path, default=None, help="append the engine's output to this file"
    )
    args = p.parse_args(argv)
    print(orjson.dumps(asyncio.run(run(args)), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
