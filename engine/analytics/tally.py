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

Pending counts are kept by hour then customer, each note (``engine.output.Note``: a cell
without its hour) as a small int the partition assigns it once (``_Ids``): counting an
output is a lookup of its customer in the current hour's map and one C-level count of its
notes' ids (``count``). A customer's counts are then a dict of ints, which the
cyclic garbage collector does not track: counted as the notes themselves (tuples), every
customer's counts were containers it walked, and with analytics on the engine spent
about twice the time in collections. ``take`` hands those dicts over as they are
(``Taken``); ``rows`` builds the counted cells (``state.analytics.Counted``, the pending
row's own form) from them, and ``id_rows`` writes them as they are with the table of the
notes they count (``state.analytics.ids_row``) for a writer process to build the cells: a
paced checkpoint's event loop so spends ~0.25 us per customer on its counts instead of
~2.5 us (issue 17: at 25,000 events/s, ~2 points of the loop). Outside a replay or a
backtest the hour changes once an hour, so there is one hour map, two around the turn of
an hour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from engine.output import Note
from state.analytics import (
    HOUR_MS,
    Cell,
    Counted,
    counter,
    id_cells,
    ids_row,
    notes_row,
    pending_row,
)

__all__ = ["ORPHAN", "Taken", "Tally"]

ORPHAN = ""
"""The pending key of counts whose customer was erased (no customer id is empty)."""

Ids = dict[int, int]
"""One customer's counts of one hour: note id -> count."""

Taken = dict[str, list[tuple[int, Ids]]]
"""Counts taken for a checkpoint: customer id -> [(hour, its counts of that hour)], note
ids of the tally that took them (``cells`` resolves them)."""

try:  # the C loop behind Counter.update, without its Python-level checks
    from collections import _count_elements as count  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - another Python implementation

    def count(counts: Ids, ids: Iterable[int]) -> None:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1


class _Ids(dict[Note, int]):
    """Note -> its id, assigned at first sight (its index in ``notes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[Note] = []

    def __missing__(self, note: Note) -> int:
        i = self[note] = len(self.notes)
        self.notes.append(note)
        return i


class Tally:
    """Pending counts of one partition: hour number -> customer id -> counts."""

    def __init__(self, index: int = 0) -> None:
        self.hours: dict[int, dict[str, Ids]] = {}
        self._hour = -1
        self._now: dict[str, Ids] = {}  # self.hours[self._hour]
        self._ids = _Ids()
        self._id = self._ids.__getitem__
        self._index = index
        self._orphan_key = f"\x00orphans:{index}"  # its row's key: one per partition

    def _of(self, customer_id: str, now: int) -> Ids:
        hour = now // HOUR_MS
        if hour != self._hour:
            self._hour = hour
            self._now = self.hours.setdefault(hour, {})
        counts = self._now.get(customer_id)
        if counts is None:
            counts = self._now[customer_id] = {}
        return counts

    def add(self, customer_id: str, now: int, notes: list[Note]) -> None:
        """Count ``notes`` (an Output's) at processing time ``now``."""
        by_cid = self._now
        if now // HOUR_MS != self._hour or (counts := by_cid.get(customer_id)) is None:
            counts = self._of(customer_id, now)
        count(counts, map(self._id, notes))

    def add_counts(self, customer_id: str, now: int, counts: Iterable[tuple[Note, int]]) -> None:
        """Add ``(note, n)`` each at processing time ``now``."""
        mine = self._of(customer_id, now)
        get, ids = mine.get, self._id
        for note, n in counts:
            i = ids(note)
            mine[i] = get(i, 0) + n

    def take(self, customer_ids: Iterable[str]) -> Taken:
        """Remove and return the pending counts of ``customer_ids`` (those with any)."""
        out: Taken = {}
        hours = self.hours
        if len(hours) == 1:  # the usual case: one hour
            ((hour, by_cid),) = hours.items()
            pop = by_cid.pop
            for cid in customer_ids:
                counts = pop(cid, None)
                if counts:
                    out[cid] = [(hour, counts)]
        else:
            for cid in customer_ids:
                got = [
                    (hour, counts)
                    for hour, by_cid in hours.items()
                    if (counts := by_cid.pop(cid, None))
                ]
                if got:
                    out[cid] = got
        for hour in [h for h, by_cid in hours.items() if not by_cid and h != self._hour]:
            del hours[hour]
        return out

    def cells(self, taken: Taken) -> dict[str, list[Counted]]:
        """``taken`` as counted cells, by customer (each cell once)."""
        notes = self._ids.notes
        return {cid: id_cells(notes, got) for cid, got in taken.items()}

    def customers(self) -> set[str]:
        """The ids with pending counts (``ORPHAN`` for erased customers')."""
        return {cid for by_cid in self.hours.values() for cid, counts in by_cid.items() if counts}

    def rows(self, taken: Taken) -> list[tuple[str, bytes]]:
        """The state rows that carry ``taken`` into a checkpoint."""
        return [pending_row(cid or self._orphan_key, c) for cid, c in self.cells(taken).items()]

    def id_rows(self, taken: Taken, sent: int) -> tuple[list[tuple[str, bytes]], int]:
        """``rows`` for a spool (engine/embedded/spool.py): the counts as taken, each
        customer's under its note ids, after the notes its writer has not been sent yet
        (``sent``: how many were; returned: how many are now)."""
        notes = self._ids.notes
        rows = [] if len(notes) == sent else [notes_row(self._index, sent, notes[sent:])]
        key, index = self._orphan_key, self._index
        rows += [ids_row(index, cid or key, got) for cid, got in taken.items()]
        return rows, len(notes)

    def give_back(self, taken: Taken) -> None:
        """Counts of a checkpoint that did not commit: pending again."""
        for cid, got in taken.items():
            self._merge(cid, got)

    def _merge(self, cid: str, got: list[tuple[int, Ids]]) -> None:
        for hour, adds in got:
            counts = self.hours.setdefault(hour, {}).setdefault(cid, {})
            for i, n in adds.items():
                counts[i] = counts.get(i, 0) + n

    def orphan(self, customer_id: str) -> None:
        """An erased customer's counts: kept under ``ORPHAN``."""
        got = self.take([customer_id]).get(customer_id)
        if got:
            self._merge(ORPHAN, got)

    def totals(self) -> Counter[Cell]:
        """Every pending count, summed (for reports: committed + pending = all so far)."""
        notes = self._ids.notes
        return counter(
            (*notes[i], hour, n)
            for hour, by_cid in self.hours.items()
            for counts in by_cid.values()
            for i, n in counts.items()
        )
