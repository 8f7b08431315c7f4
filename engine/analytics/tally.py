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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from engine.analytics.observe import Add
from state.analytics import Cell, pending_row

__all__ = ["ORPHAN", "Taken", "Tally"]

ORPHAN = ""
"""The pending key of counts whose customer was erased (no customer id is empty)."""

Taken = dict[str, Counter[Cell]]


class Tally:
    """Pending counts of one partition, per customer."""

    def __init__(self, index: int = 0) -> None:
        self.pending: dict[str, Counter[Cell]] = {}
        self._orphan_key = f"\x00orphans:{index}"  # its row's key: one per partition

    def counts(self, customer_id: str) -> Add:
        """``customer_id``'s pending counts, to add to (``drop_empty`` after, if none)."""
        counts = self.pending.get(customer_id)
        if counts is None:
            counts = self.pending[customer_id] = Counter()
        return counts

    def drop_empty(self, customer_id: str) -> None:
        counts = self.pending.get(customer_id)
        if counts is not None and not counts:
            del self.pending[customer_id]

    def take(self, customer_ids: Iterable[str]) -> Taken:
        """Remove and return the pending counts of ``customer_ids`` (those with any)."""
        pending = self.pending
        out: Taken = {}
        for cid in customer_ids:
            counts = pending.pop(cid, None)
            if counts:
                out[cid] = counts
        return out

    def rows(self, taken: Taken) -> list[tuple[str, bytes]]:
        """The state rows that carry ``taken`` into a checkpoint."""
        return [pending_row(cid or self._orphan_key, counts) for cid, counts in taken.items()]

    def give_back(self, taken: Taken) -> None:
        """Counts of a checkpoint that did not commit: pending again."""
        for cid, counts in taken.items():
            self.pending.setdefault(cid, Counter()).update(counts)

    def orphan(self, customer_id: str) -> None:
        """An erased customer's counts: kept under ``ORPHAN``."""
        counts = self.pending.pop(customer_id, None)
        if counts:
            self.pending.setdefault(ORPHAN, Counter()).update(counts)

    def totals(self) -> Counter[Cell]:
        """Every pending count, summed (for reports: committed + pending = all so far)."""
        out: Counter[Cell] = Counter()
        for counts in self.pending.values():
            out.update(counts)
        return out
