"""Benchmark: the floor under the core's events/s in this interpreter.

A stripped-down per-event loop over bench_core's trace: decode (and, unless ``--raw``,
validate) each event, dedup on a fingerprint, three windowed-counter buckets, last seen,
the recently viewed list and the cart, and for the stock recipes' trigger types the flow
bookkeeping: exits close flows, triggers (re)open one with its timer on a heap, due
timers pop. No rule expressions, sends, frequency caps, quiet hours, experiments, goals,
outputs or idempotency keys: none of the semantics the real core adds. It is not a
processor; it answers how fast the minimum work per event can go in CPython, i.e. how
much of the per-event budget a target leaves for everything else.

    python -m load_tests.bench_floor --customers 100000 --events 1000000
"""

from __future__ import annotations

import argparse
import gc
import heapq
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from engine.events import decode_event
from engine.types import Event
from load_tests.bench_core import trace_path

__all__ = ["main"]

_TRIGGERS = {  # event type -> (flow, wait ms), as the stock recipes open them
    "product_viewed": ("browse", 7_200_000),
    "cart_item_added": ("cart", 14_400_000),
    "customer_signed_up": ("welcome", 86_400_000),
    "order_completed": ("winback", 5_184_000_000),
    "order_delivered": ("review", 259_200_000),
}
_EXITS = {"cart_item_added": ("browse",), "order_completed": ("cart", "browse")}
_BUCKETS = ((0, 300_000), (1, 3_600_000), (2, 86_400_000))


def floor_loop(lines: list[bytes], decode: Callable[[bytes], Event]) -> float:
    """Run the stripped-down loop over ``lines``; returns the seconds it took."""
    states: dict[str, list[Any]] = {}
    due: dict[tuple[str, str], int] = {}
    heap: list[tuple[int, str, str]] = []
    codes: dict[str, int] = {}
    t0 = time.perf_counter()
    for line in lines:
        ev = decode(line)
        ts = ev.ts
        cid = ev.customer_id
        st = states.get(cid)
        if st is None:  # first seen, last seen, dedup, counters, viewed, cart, flows
            st = states[cid] = [ts, ts, set(), {}, None, None, {}]
        fp = zlib.crc32(ev.event_id.encode())
        if fp in st[2]:
            continue
        st[2].add(fp)
        if ts > st[1]:
            st[1] = ts
        t = ev.type
        code = codes.get(t)
        if code is None:
            code = codes[t] = zlib.crc32(t.encode()) << 26
        counters = st[3]
        for gran, size in _BUCKETS:
            key = code | gran << 24 | ts // size
            counters[key] = counters.get(key, 0) + 1
        if t == "product_viewed":
            pid = ev.properties["product_id"]
            viewed = st[4]
            if viewed is None:
                st[4] = [pid]
            else:
                if pid in viewed:
                    viewed.remove(pid)
                viewed.append(pid)
                if len(viewed) > 5:
                    del viewed[0]
        elif t == "cart_item_added":
            if st[5] is None:
                st[5] = {}
            st[5][ev.properties["product_id"]] = 1.0
        flows = st[6]
        for flow in _EXITS.get(t, ()):
            if flows.pop(flow, None) is not None:
                due.pop((cid, flow), None)
        trigger = _TRIGGERS.get(t)
        if trigger is not None:
            flow, wait = trigger
            flows[flow] = (ev.event_id, ts)
            due[(cid, flow)] = ts + wait
            heapq.heappush(heap, (ts + wait, cid, flow))
        while heap and heap[0][0] <= ts:
            d, other, flow = heapq.heappop(heap)
            if due.get((other, flow)) == d:
                del due[(other, flow)]
                states[other][6].pop(flow, None)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the floor under the core's events/s")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--raw", action="store_true", help="decode without validating properties")
    args = p.parse_args(argv)
    path: Path = trace_path(args.customers, args.events, args.seed)
    with path.open("rb") as fh:
        lines = fh.readlines()
    decode = msgspec.json.Decoder(Event).decode if args.raw else decode_event
    gc.collect()
    gc.freeze()
    took = floor_loop(lines, decode)
    report = {
        "events": len(lines),
        "validated": not args.raw,
        "seconds": round(took, 2),
        "events_per_s_one_core": round(len(lines) / took),
        "us_per_event": round(took / len(lines) * 1e6, 2),
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
