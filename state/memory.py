"""In-memory backends: a dict of customer states and a heap of timers.

Idle customers are kept compacted: ``compact_idle`` replaces the state objects of
customers not touched since a given time with their packed bytes (``state.customer.pack``,
MessagePack: about 480 bytes on the storefront trace, where the JSON row took 890); ``get``
inflates one transparently on its next event or timer. Most customers of a shop are
idle at any moment, so this keeps memory near the serialized size per customer.

Live customers are kept in touch order (oldest first), so a sweep stops at the first
customer touched too recently, and a runtime can compact in small slices (``limit``)
without rescanning everyone."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from state.customer import CustomerState, pack, unpack

__all__ = ["MemoryStore", "MemoryTimers"]


class MemoryStore:
    """Customer states in a dict."""

    def __init__(self) -> None:
        self._data: dict[str, CustomerState | bytes] = {}
        # live objects: customer id -> last touch time, in touch order (oldest first)
        self._hot: dict[str, int] = {}
        self._now = 0  # latest touch time seen
        # cap for ``compact_idle`` calls that pass no limit (a runtime that must not stall
        # its event loop sets it and sweeps the rest in slices); None: no cap
        self.compact_limit: int | None = None

    def get(self, customer_id: str) -> CustomerState | None:
        st = self._data.get(customer_id)
        if st is None or type(st) is CustomerState:
            return st
        assert isinstance(st, bytes)
        live = unpack(st)
        self._data[customer_id] = live
        self._hot[customer_id] = self._now  # live again: compact it again once idle
        return live

    def touch(self, customer_id: str, now: int) -> None:
        """Mark a customer active at ``now`` (kept live until idle past a compaction).
        Touch times are expected not to decrease (a driver's clock); the customer moves
        to the end of the touch order."""
        hot = self._hot
        hot.pop(customer_id, None)
        hot[customer_id] = now
        if now > self._now:
            self._now = now

    def compact_idle(self, before: int, limit: int | None = None) -> int:
        """Serialize the states of customers not touched since ``before``, oldest first,
        at most ``limit`` of them (``compact_limit`` when None); returns how many left the
        live set (a caller slicing the work calls again while it returns ``limit``)."""
        if limit is None:
            limit = self.compact_limit
        hot = self._hot
        idle: list[str] = []
        for cid, t in hot.items():
            if t >= before or (limit is not None and len(idle) >= limit):
                break
            idle.append(cid)
        data = self._data
        for cid in idle:
            del hot[cid]
            st = data.get(cid)
            if type(st) is CustomerState:
                data[cid] = pack(st)
        return len(idle)

    def row(self, customer_id: str) -> bytes | None:
        """The customer's state as stored bytes (``state.customer.pack``: a compacted
        state's bytes as held, a live one packed now); None if unknown. Never inflates."""
        st = self._data.get(customer_id)
        if st is None or isinstance(st, bytes):
            return st
        return pack(st)

    def put(self, state: CustomerState) -> None:
        self._data[state.customer_id] = state

    def delete(self, customer_id: str) -> None:
        self._data.pop(customer_id, None)
        self._hot.pop(customer_id, None)

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[CustomerState]:
        """Every state, inflated (use for snapshots and tests, not on the hot path)."""
        for cid in list(self._data):
            st = self.get(cid)
            if st is not None:
                yield st


class MemoryTimers:
    """A heap of (due, customer_id, rank, rule_id) with lazy updates. ``rank`` orders one
    customer's timers due at the same instant: the rule set's priority order
    (:meth:`order`; default 0 for all, so rule id order). ``_timers`` holds each timer's
    current due time, by rule id then customer id; a heap entry fires only if it matches
    it. Re-scheduling a timer to a later time pushes nothing while the timer still has an
    earlier entry in the heap: that entry, when it comes up, is moved to the current due
    time. A flow that restarts on every event (browse abandonment on each product view)
    therefore keeps one heap entry, not one per event; the heap grew to twice the live
    timers every few seconds before, and rebuilding it stalled every partition at once
    (11-22 ms each, seen as 40-70 ms latency spikes under bench_ingest). Cancelled timers'
    entries are dropped when they come up, or in a rebuild if they pile up.

    Memory: a timer is one slot in its rule's dict (keyed by the customer id object the
    heap entry holds too: no key tuple) plus its heap entry, ~150 bytes; the record is
    the due time itself while the timer's heap entry is at it (almost always), and a
    (due, queued) pair only between a later re-schedule or a cancel and its entry coming
    up (``queued``: the time of the entry known to be in the heap; ``due`` None:
    cancelled). Every customer with counted segment windows holds one (the segment
    timer), so this is per-customer memory (BENCHMARKS.md, bytes per customer)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int, str]] = []
        # rule id -> customer id -> due, or (due or None when cancelled, queued)
        self._timers: dict[str, dict[str, int | tuple[int | None, int]]] = {}
        self._n = 0  # pending timers
        self._rank: dict[str, int] = {}  # rule id -> rank (absent: ``_last``)
        self._last = 0

    def schedule(self, customer_id: str, rule_id: str, due: int) -> None:
        per = self._timers.get(rule_id)
        if per is None:
            per = self._timers[rule_id] = {}
        rec = per.get(customer_id)
        queued: int | None
        if rec is None:
            queued = None
            self._n += 1
        elif isinstance(rec, int):
            queued = rec
        else:
            old, queued = rec
            if old is None:
                self._n += 1
        if queued is not None and queued <= due:
            # that entry comes up first and is moved to ``due`` then
            per[customer_id] = due if queued == due else (due, queued)
            return
        per[customer_id] = due
        heapq.heappush(self._heap, (due, customer_id, self._rank.get(rule_id, self._last), rule_id))
        if len(self._heap) > 2 * self._n + 1024:
            self._compact()

    def cancel(self, customer_id: str, rule_id: str) -> None:
        per = self._timers.get(rule_id)
        rec = None if per is None else per.get(customer_id)
        if rec is None:
            return
        assert per is not None
        if isinstance(rec, int):
            per[customer_id] = (None, rec)
            self._n -= 1
        elif rec[0] is not None:
            per[customer_id] = (None, rec[1])
            self._n -= 1

    def order(self, ranks: dict[str, int]) -> None:
        """Order one customer's timers due at the same instant by ``ranks`` (rule id ->
        rank, lowest first; ids not in it after all of them), then rule id. The heap is
        rebuilt when the order changes (a deploy)."""
        last = max(ranks.values(), default=-1) + 1
        if ranks == self._rank and last == self._last:
            return
        self._rank = dict(ranks)
        self._last = last
        self._compact()

    def _settle(self, now: int | None) -> tuple[int, str, int, str] | None:
        """Bring a live entry to the top of the heap: drop entries of cancelled timers and
        move early ones to their timer's due time. Returns the top entry (popped if it is
        due at or before ``now``), or None."""
        heap = self._heap
        timers = self._timers
        while heap:
            item = heap[0]
            t, cid, rank, rid = item
            per = timers.get(rid)
            rec = None if per is None else per.get(cid)
            if rec is None:  # no record: a stale entry (fired, or forgotten)
                heapq.heappop(heap)
                continue
            assert per is not None
            if isinstance(rec, int):
                due: int | None = rec
                queued = rec
            else:
                due, queued = rec
            if due == t:
                if now is None or t > now:
                    return item
                heapq.heappop(heap)
                del per[cid]  # fired: any other entry of it is stale now
                self._n -= 1
                return item
            if due is None:  # cancelled
                heapq.heappop(heap)
                if queued == t:  # its known entry: nothing of it is queued any more
                    del per[cid]
                continue
            # an early entry (the timer moved later since): move it to the due time
            heapq.heapreplace(heap, (due, cid, rank, rid))
            if queued == t or due < queued:
                per[cid] = due
        return None

    def pop_due(self, now: int) -> tuple[int, str, str] | None:
        item = self._settle(now)
        return (item[0], item[1], item[3]) if item is not None and item[0] <= now else None

    def next_due(self) -> int | None:
        item = self._settle(None)
        return None if item is None else item[0]

    def _live(self) -> Iterator[tuple[int, str, str]]:
        for rid, per in self._timers.items():
            for cid, rec in per.items():
                due = rec if isinstance(rec, int) else rec[0]
                if due is not None:
                    yield due, cid, rid

    def pending(self) -> list[tuple[int, str, str]]:
        """All pending timers in due order (for snapshots and the customer API)."""
        return sorted(self._live())

    def _compact(self) -> None:
        rank, last = self._rank, self._last
        live = list(self._live())
        self._heap = [(d, c, rank.get(r, last), r) for d, c, r in live]
        heapq.heapify(self._heap)
        timers: dict[str, dict[str, int | tuple[int | None, int]]] = {}
        for d, c, r in live:
            per = timers.get(r)
            if per is None:
                per = timers[r] = {}
            per[c] = d
        self._timers = timers

    def __len__(self) -> int:
        return self._n
