"""A partition of customers, the unit of state both runtimes own: the customers' states,
their timers, a virtual clock that follows acceptance time, the applied log position,
which customers changed or were erased since the last write, and (analytics on) their
pending campaign counts.

Processing time for an event is its acceptance time (the embedded journal's, or the Kafka
timestamp the ingest set), and a timer is processed at its due time (or the partition
clock, if later). A replay after a crash or a rebalance therefore makes the same decisions
and idempotency keys as the first run; how late a timer really fired is measured
separately on the wall clock. Each state records the log position of the last event it
includes (``CustomerState.seq``), so an event a restored state already holds is skipped,
however many events ago it was.

Positions: the embedded runtime's journal seq (from 1); the distributed runtime's Kafka
offset + 1. ``position`` is the highest applied.

The unit's life: :meth:`recover` the rows a backend kept, :meth:`apply` events and
:meth:`fire_until` timers, :meth:`erase` customers, and for each write :meth:`begin`
(take what changed: a :class:`Changes`), let the backend write it, and :meth:`abort` if
the write failed (the next write takes it again). The two backends: the embedded
checkpoint (engine/embedded/paced.py, and the inline one in engine/embedded/runtime.py:
SQLite) and the distributed changelog (engine/distributed/processing.py: a compacted
Kafka topic). Dirty tracking is here and only here: every Output names the customer it
came from, and that customer is marked changed (the processor mutates states in place).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.analytics.observe import FEEDBACK, observe
from engine.analytics.tally import Tally
from engine.clock import VirtualClock
from engine.driver import Driver, OutputHandler
from engine.output import Output
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import SEGMENT_TIMER, CustomerState
from state.memory import MemoryStore, MemoryTimers

__all__ = ["Changes", "Partition"]


@dataclass(slots=True)
class Changes:
    """What one write takes from a partition: the customers changed and erased since the
    last write, and the position applied when it was taken."""

    dirty: list[str]
    erased: list[str]
    position: int


class Partition:
    """One partition's customers. ``tally``: campaign counts not yet written
    (engine/analytics/tally.py; None: analytics off)."""

    def __init__(
        self, index: int, ruleset: RuleSet, on_output: OutputHandler, analytics: bool = False
    ) -> None:
        self.index = index
        self.store = MemoryStore()
        self.timers = MemoryTimers()
        self.clock = VirtualClock(0)
        self.driver = Driver(
            ruleset, store=self.store, timers=self.timers, clock=self.clock, on_output=self._output
        )
        self.driver.local_forwards = False  # the runtime routes them to their owners
        self._on_output = on_output
        self.position = 0
        self.dirty: set[str] = set()
        self.erased: set[str] = set()
        self.tally: Tally | None = Tally(index) if analytics else None
        self.driver.processor.notes = analytics  # what the flows did, for the counts
        self._event: Event | None = None  # analytics: the event being processed
        self._feedback: Event | None = None  # ... when it is delivery feedback

    def set_ruleset(self, ruleset: RuleSet) -> None:
        self.driver.processor.ruleset = ruleset

    # --- recovery ----------------------------------------------------------------------
    def recover(self, states: Iterable[CustomerState]) -> int:
        """Restore states a backend kept, with their timers (compacted at the next sweep);
        returns how many."""
        store, timers = self.store, self.timers
        n = 0
        for st in states:
            store.put(st)
            store.touch(st.customer_id, 0)
            for inst in (st.flows or {}).values():
                if inst.due is not None:
                    timers.schedule(st.customer_id, inst.rule_id, inst.due)
            if st.segments_due is not None:
                timers.schedule(st.customer_id, SEGMENT_TIMER, st.segments_due)
            n += 1
        return n

    # --- processing --------------------------------------------------------------------
    def apply(self, position: int, accepted_at: int, event: Event) -> Output | None:
        """Fire timers due up to ``accepted_at``, then process the event at that time and
        record ``position`` (its place in the log, > 0) in the customer's state. None when
        the state already includes that position (a replay)."""
        if position > self.position:
            self.position = position
        self.driver.fire_due(accepted_at)  # first: their outputs are not the event's
        self.clock.set(accepted_at)
        st = self.store.get(event.customer_id)
        if st is not None and st.seq >= position:
            return None
        self._event = event
        self._feedback = event if event.type in FEEDBACK else None
        try:
            out = self.driver.process(event)
        finally:
            self._event = self._feedback = None
        st = self.store.get(event.customer_id)
        if st is not None:
            st.seq = position
        return out

    def fire_until(self, t: int) -> int:
        """Fire every timer due at or before ``t``; returns how many fired."""
        return self.driver.fire_due(t)

    def _output(self, out: Output) -> None:
        cid = out.customer_id
        if cid:
            self.dirty.add(cid)
            tally = self.tally
            if tally is not None:
                # Most outputs count their flow notes only (no conversion, not a
                # feedback event of their customer): one C-level count, no state lookup.
                fb = self._feedback
                if out.conversions or (
                    fb is not None and out.timer_due is None and fb.customer_id == cid
                ):
                    event = self._event  # the input, if an event of this customer's
                    if event is not None and (
                        out.timer_due is not None or event.customer_id != cid
                    ):
                        event = None
                    rs = self.driver.processor.ruleset
                    counts = observe(rs, self.store.get(cid), out, event)
                    if counts:
                        tally.add_counts(cid, self.clock.now(), counts)
                elif out.notes:
                    tally.add(cid, self.clock.now(), out.notes)
        self._on_output(out)

    # --- customers ---------------------------------------------------------------------
    def erase(self, customer_id: str) -> bool:
        """Drop the customer's state and timers; the next write deletes it from the
        backend (a checkpoint delete, a changelog tombstone) and its pending counts are
        orphaned. False when there was no state."""
        st = self.store.get(customer_id)
        if st is None:
            return False
        for inst in (st.flows or {}).values():
            self.timers.cancel(customer_id, inst.rule_id)
        self.timers.cancel(customer_id, SEGMENT_TIMER)
        self.store.delete(customer_id)
        self.dirty.discard(customer_id)
        self.erased.add(customer_id)
        if self.tally is not None:
            self.tally.orphan(customer_id)
        return True

    # --- writes ------------------------------------------------------------------------
    def begin(self) -> Changes:
        """Take what changed since the last write, for a backend to write."""
        changes = Changes(list(self.dirty), sorted(self.erased), self.position)
        self.dirty = set()
        self.erased = set()
        return changes

    def abort(self, changes: Changes) -> None:
        """Give back what :meth:`begin` took, for a write that failed: the next write
        takes it again (a state erased since is skipped then)."""
        self.dirty.update(changes.dirty)
        self.erased.update(changes.erased)

    def states(self, customer_ids: Iterable[str]) -> list[CustomerState]:
        """The live states of ``customer_ids`` (erased ones left out)."""
        get = self.store.get
        return [st for cid in customer_ids if (st := get(cid)) is not None]
