"""An independent oracle of the seven stock segments (rules/segments/stock.yaml).

Contract: ``segment_lines(trace_lines)`` returns, for a JSONL trace of events in send
order, every membership change the engine must make when it runs ``rules/recipes`` +
``rules/segments`` over the trace in event time (``nudge backtest``'s loop): one JSON
object per line, ``{"at": ms, "customer_id", "segment_id", "kind": "entered"|"exited"}``,
sorted by (at, customer_id, segment_id, kind).

Like load_tests/oracle.py it imports nothing from engine/, rules/ or state/: the
conditions are plain Python below and the windowed counts are re-derived from
docs/segments.md and the state/windows.py docstring:

- ``count(t, w)`` at ``now`` sums buckets of ``t``'s events (5 minutes for ``1h``, an hour
  for ``24h``, a day for ``7d``/``30d``/``90d``, each event in the bucket of its own
  time) whose index is at least ``(now - length) // size``: the window's start rounded
  down to its bucket.
- A count changes with no event only when its oldest counted bucket leaves the window, at
  ``(index + 1) * size + length``. The oracle keeps, per customer, the earliest such
  instant over the conditions' windows and re-evaluates every condition then, like any
  other instant at which something changed.
- Processing time is the clock of the backtest: it moves to each event's time (never
  backwards) after firing everything due at or before it, each at its due time. So a late
  event is applied and counted at the current clock (in the bucket of its own time), and
  the conditions are evaluated at the clock.
- Late events: the engine does not count an event in a bucket older than the bucket's
  retention (65 minutes, 25 hours, 91 days). Such an event's bucket is already before
  the start of its windows at the clock, and windows only move forward, so it can never
  be counted: the oracle applies the same rule, and no customer is excluded.
- Duplicates: the last 32 event ids per customer; a duplicate changes nothing.
- Cart (arrival order), orders and lifetime value as in docs/semantics.md.

Every condition is evaluated after every event (the engine evaluates only those the
event type can change, and skips those one more counted event cannot move: the
comparison checks those shortcuts). CLI::

    python -m load_tests.oracle_segments trace.jsonl > segments.jsonl
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from load_tests.oracle_recipes import number, parse_ts, trace_events

__all__ = [
    "SEGMENTS",
    "Change",
    "SegmentOracle",
    "SegmentStats",
    "change_line",
    "main",
    "segment_lines",
]

_MIN5 = 300_000
_HOUR = 3_600_000
_DAY = 86_400_000
DRAIN = 400 * _DAY  # the backtest keeps firing timers 400 days past its last clock
DEDUP = 32
# window -> (bucket size, length)
WINDOWS: dict[str, tuple[int, int]] = {
    "1h": (_MIN5, _HOUR),
    "24h": (_HOUR, _DAY),
    "7d": (_DAY, 7 * _DAY),
    "30d": (_DAY, 30 * _DAY),
    "90d": (_DAY, 90 * _DAY),
}
# bucket size -> retention (state/windows.py docstring: one bucket more than the window)
RETENTION = {_MIN5: _HOUR + _MIN5, _HOUR: _DAY + _HOUR, _DAY: 91 * _DAY}

Change = tuple[int, str, str, str]
"""(at ms, customer id, segment id, "entered" | "exited")"""


@dataclass
class SegCustomer:
    id: str
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=DEDUP))
    orders: int = 0
    ltv: float = 0.0
    cart: dict[str, float] = field(default_factory=dict)  # product -> quantity
    # (event type, bucket size) -> bucket index -> events
    buckets: dict[tuple[str, int], dict[int, int]] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)
    due: int | None = None

    def cart_items(self) -> int:
        return int(sum(self.cart.values()))

    def count(self, etype: str, window: str, now: int) -> int:
        size, length = WINDOWS[window]
        first = (now - length) // size
        b = self.buckets.get((etype, size))
        return 0 if not b else sum(n for i, n in b.items() if i >= first)


Condition = Callable[[SegCustomer, int], bool]


@dataclass(frozen=True)
class Segment:
    id: str
    test: Condition
    windows: tuple[tuple[str, str], ...]  # the (type, window) pairs the condition counts


SEGMENTS: tuple[Segment, ...] = (
    Segment("new", lambda c, now: c.orders == 1, ()),
    Segment("returning", lambda c, now: c.orders >= 2, ()),
    Segment("vip", lambda c, now: c.ltv >= 500.0, ()),
    Segment(
        "viewed-not-bought",
        lambda c, now: (
            c.count("product_viewed", "7d", now) > 0 and c.count("order_completed", "7d", now) == 0
        ),
        (("product_viewed", "7d"), ("order_completed", "7d")),
    ),
    Segment("carted-not-bought", lambda c, now: c.cart_items() > 0, ()),
    Segment(
        "checkout-abandoned",
        lambda c, now: (
            c.count("checkout_started", "24h", now) > 0
            and c.count("order_completed", "24h", now) == 0
        ),
        (("checkout_started", "24h"), ("order_completed", "24h")),
    ),
    Segment(
        "lapsed",
        lambda c, now: c.orders > 0 and c.count("order_completed", "90d", now) == 0,
        (("order_completed", "90d"),),
    ),
)
WATCHED: tuple[tuple[str, str], ...] = tuple(
    sorted({pair for seg in SEGMENTS for pair in seg.windows})
)
COUNTED: frozenset[str] = frozenset(t for t, _ in WATCHED)
SIZES: dict[str, tuple[int, ...]] = {
    t: tuple(sorted({WINDOWS[w][0] for tt, w in WATCHED if tt == t})) for t in COUNTED
}
LONGEST: dict[int, int] = {}  # bucket size -> longest watched window on it (for pruning)
for _t, _w in WATCHED:
    _size, _length = WINDOWS[_w]
    LONGEST[_size] = max(LONGEST.get(_size, 0), _length)


@dataclass
class SegmentStats:
    events: int = 0
    skipped: int = 0
    duplicates: int = 0
    late: int = 0  # events stamped before the clock (applied at the clock)
    not_counted: int = 0  # (event, bucket) pairs past retention, not counted
    timers: int = 0


class SegmentOracle:
    """Feed events in send order with :meth:`event`, then :meth:`finish`; ``changes``
    holds every :data:`Change` in the order made."""

    def __init__(self) -> None:
        self.customers: dict[str, SegCustomer] = {}
        self.queue: list[tuple[int, str]] = []  # (due, customer), lazy deletes
        self.clock: int | None = None
        self.changes: list[Change] = []
        self.stats = SegmentStats()

    def event(self, ev: dict[str, Any]) -> None:
        ts = parse_ts(ev["timestamp"])
        if self.clock is None:
            self.clock = ts
        self.fire(ts)
        if ts < self.clock:
            self.stats.late += 1
        self.clock = max(self.clock, ts)
        self.stats.events += 1
        self.process(ev, ts, self.clock)

    def finish(self) -> None:
        if self.clock is not None:
            self.fire(self.clock + DRAIN)

    def fire(self, upto: int) -> None:
        """Every re-evaluation due at or before ``upto``, each at its due time."""
        while self.queue and self.queue[0][0] <= upto:
            due, cid = heapq.heappop(self.queue)
            c = self.customers[cid]
            if c.due != due:
                continue  # superseded
            assert self.clock is not None
            self.clock = max(self.clock, due)
            self.stats.timers += 1
            c.due = None
            self.evaluate(c, self.clock)

    def process(self, ev: dict[str, Any], ts: int, now: int) -> None:
        cid = ev["customer_id"]
        c = self.customers.get(cid)
        if c is None:
            c = self.customers[cid] = SegCustomer(cid)
        if ev["event_id"] in c.recent:
            self.stats.duplicates += 1
            return
        c.recent.append(ev["event_id"])
        etype, props = ev["type"], ev.get("properties") or {}
        if etype == "cart_item_added":
            pid = str(props["product_id"])
            c.cart[pid] = c.cart.get(pid, 0.0) + number(props.get("quantity"), 1.0)
        elif etype == "cart_item_removed":
            pid = str(props["product_id"])
            if pid in c.cart:
                qty = props.get("quantity")
                left = 0.0 if qty is None else c.cart[pid] - number(qty)
                if left > 0:
                    c.cart[pid] = left
                else:
                    del c.cart[pid]
        elif etype == "cart_replaced":
            cart: dict[str, float] = {}
            for item in props["items"]:
                pid = str(item["product_id"])
                qty = number(item.get("quantity"), 1.0) + cart.get(pid, 0.0)
                if qty > 0:
                    cart[pid] = qty
            c.cart = cart
        elif etype == "order_completed":
            c.orders += 1
            c.ltv = round(c.ltv + number(props.get("total")), 2)
            c.cart = {}
        elif etype == "order_refunded":
            c.ltv = round(max(0.0, c.ltv - number(props.get("amount"))), 2)
        if etype in COUNTED:
            for size in SIZES[etype]:
                if now - ts < RETENTION[size]:
                    b = c.buckets.setdefault((etype, size), {})
                    b[ts // size] = b.get(ts // size, 0) + 1
                else:
                    self.stats.not_counted += 1
        self.evaluate(c, now)

    def evaluate(self, c: SegCustomer, now: int) -> None:
        """Every condition at ``now``; then the next instant a watched count changes."""
        for seg in SEGMENTS:
            inside = seg.test(c, now)
            if inside != (seg.id in c.members):
                if inside:
                    c.members.add(seg.id)
                else:
                    c.members.discard(seg.id)
                self.changes.append((now, c.id, seg.id, "entered" if inside else "exited"))
        due = self.next_change(c, now)
        if due != c.due:
            c.due = due
            if due is not None:
                heapq.heappush(self.queue, (due, c.id))

    @staticmethod
    def next_change(c: SegCustomer, now: int) -> int | None:
        # buckets no window can reach again are dropped (windows only move forward)
        for (_, size), b in c.buckets.items():
            floor = (now - LONGEST[size]) // size
            for i in [i for i in b if i < floor]:
                del b[i]
        due: int | None = None
        for etype, window in WATCHED:
            size, length = WINDOWS[window]
            got = c.buckets.get((etype, size))
            if not got:
                continue
            first = (now - length) // size
            inside = [i for i, n in got.items() if n and i >= first]
            if inside:
                at = (min(inside) + 1) * size + length
                if due is None or at < due:
                    due = at
        return due

    def sorted_changes(self) -> list[Change]:
        return sorted(self.changes)


def change_line(change: Change) -> bytes:
    at, cid, seg, kind = change
    return orjson.dumps({"at": at, "customer_id": cid, "segment_id": seg, "kind": kind})


def segment_changes(lines: Iterable[bytes], stats: SegmentStats | None = None) -> list[Change]:
    """The expected membership changes for a JSONL trace, sorted."""
    oracle = SegmentOracle()

    def skipped() -> None:
        oracle.stats.skipped += 1

    for ev in trace_events(lines, skipped):
        oracle.event(ev)
    oracle.finish()
    if stats is not None:
        stats.__dict__.update(oracle.stats.__dict__)
    return oracle.sorted_changes()


def segment_lines(lines: Iterable[bytes], stats: SegmentStats | None = None) -> list[bytes]:
    """The expected membership change lines (no trailing newlines) for a JSONL trace."""
    return [change_line(ch) for ch in segment_changes(lines, stats)]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m load_tests.oracle_segments trace.jsonl > segments.jsonl``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m load_tests.oracle_segments trace.jsonl > segments.jsonl",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    stats = SegmentStats()
    with open(args[0], "rb") as f:
        out = segment_lines(f, stats)
    sys.stdout.buffer.write(b"".join(line + b"\n" for line in out))
    dt = time.perf_counter() - t0
    print(
        f"oracle segments: {stats.events} events ({stats.duplicates} duplicates, "
        f"{stats.late} late, {stats.skipped} skipped), {stats.timers} timers, "
        f"{len(out)} changes in {dt:.2f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
