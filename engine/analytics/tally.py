"""The counts a partition produced since its customers' states were last checkpointed.

Exactness through restarts and ``kill -9`` rests on one rule: a count is committed in
the same SQLite transaction as the customer state that includes the input that produced
it. So counts are kept per customer (``pending``); when a checkpoint packs a customer's
state it also ``take``s that customer's counts and writes them beside the state
(``engine.embedded.storage.analytics.pending_row``: same chunk, same transaction). After a crash,
the states restored hold exactly the inputs whose counts were committed, and the journal
replay (which skips what a restored state holds) produces the others again, once.

A checkpoint that fails gives its counts back (``give_back``), like its customers'
dirty marks; the next one writes them again under the same customer key, replacing,
never adding to, any row the failed one committed. Counts of a customer erased before
its state was packed move to the partition's own key (``ORPHAN``), packed with the
next round.

Pending counts are kept as the processor notes them (``engine.output.Note``: a cell
without its hour), by hour then customer: counting an output is a lookup of its customer
in the current hour's map and one C-level count of its notes (``observe.count``), with no
Counter or per-hour map made per customer. ``take`` builds the counted cells
(``state.analytics.Counted``, the pending row's own form) once per checkpoint. Outside a
replay or a backtest the hour changes once an hour, so there is one hour map, two around
the turn of an hour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from engine.analytics.observe import Add, count
from engine.output import Note
from state.analytics import HOUR_MS, Cell, Counted, counter, pending_row

__all__ = ["ORPHAN", "Taken", "Tally"]

ORPHAN = ""
"""The pending key of counts whose customer was erased (no customer id is empty)."""

Taken = dict[str, list[Counted]]
"""Counts taken for a checkpoint: customer id -> its counted cells (each cell once)."""


class Tally:
    """Pending counts of one partition: hour number -> customer id -> counts."""

    def __init__(self, index: int = 0) -> None:
        self.hours: dict[int, dict[str, Add]] = {}
        self._hour = -1
        self._now: dict[str, Add] = {}  # self.hours[self._hour]
        self._orphan_key = f"\x00orphans:{index}"  # its row's key: one per partition

    def _at(self, hour: int) -> dict[str, Add]:
        if hour != self._hour:
            self._hour = hour
            self._now = self.hours.setdefault(hour, {})
        return self._now

    def add(self, customer_id: str, now: int, notes: list[Note]) -> None:
        """Count ``notes`` (an Output's) at processing time ``now``."""
        hour = now // HOUR_MS
        by_cid = self._now if hour == self._hour else self._at(hour)
        counts = by_cid.get(customer_id)
        if counts is None:
            counts = by_cid[customer_id] = {}
        count(counts, notes)

    def counts(self, customer_id: str, now: int) -> Add:
        """``customer_id``'s pending counts of the hour of ``now``, to add to
        (``drop_empty`` after, if none)."""
        by_cid = self._at(now // HOUR_MS)
        counts = by_cid.get(customer_id)
        if counts is None:
            counts = by_cid[customer_id] = {}
        return counts

    def drop_empty(self, customer_id: str, now: int) -> None:
        by_cid = self.hours.get(now // HOUR_MS)
        if by_cid is not None and not by_cid.get(customer_id, True):
            del by_cid[customer_id]

    def take(self, customer_ids: Iterable[str]) -> Taken:
        """Remove and return the pending counts of ``customer_ids`` (those with any)."""
        out: Taken = {}
        hours = self.hours
        if len(hours) == 1:  # the usual case: one hour
            ((hour, by_cid),) = hours.items()
            for cid in customer_ids:
                counts = by_cid.pop(cid, None)
                if counts:
                    out[cid] = [(*note, hour, n) for note, n in counts.items() if n]
        else:
            for cid in customer_ids:
                cells = [
                    (*note, hour, n)
                    for hour, by_cid in hours.items()
                    if (counts := by_cid.pop(cid, None))
                    for note, n in counts.items()
                    if n
                ]
                if cells:
                    out[cid] = cells
        for hour in [h for h, by_cid in hours.items() if not by_cid and h != self._hour]:
            del hours[hour]
        return out

    def customers(self) -> set[str]:
        """The ids with pending counts (``ORPHAN`` for erased customers')."""
        return {cid for by_cid in self.hours.values() for cid, counts in by_cid.items() if counts}

    def rows(self, taken: Taken) -> list[tuple[str, bytes]]:
        """The state rows that carry ``taken`` into a checkpoint."""
        return [pending_row(cid or self._orphan_key, counts) for cid, counts in taken.items()]

    def give_back(self, taken: Taken) -> None:
        """Counts of a checkpoint that did not commit: pending again."""
        for cid, cells in taken.items():
            self._merge(cid, cells)

    def _merge(self, cid: str, cells: list[Counted]) -> None:
        hours = self.hours
        for rid, version, variant, step, metric, hour, n in cells:
            counts = hours.setdefault(hour, {}).setdefault(cid, {})
            note = (rid, version, variant, step, metric)
            counts[note] = counts.get(note, 0) + n

    def orphan(self, customer_id: str) -> None:
        """An erased customer's counts: kept under ``ORPHAN``."""
        cells = self.take([customer_id]).get(customer_id)
        if cells:
            self._merge(ORPHAN, cells)

    def totals(self) -> Counter[Cell]:
        """Every pending count, summed (for reports: committed + pending = all so far)."""
        return counter(
            (*note, hour, n)
            for hour, by_cid in self.hours.items()
            for counts in by_cid.values()
            for note, n in counts.items()
        )
