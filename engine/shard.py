"""A shard of customers, as both runtimes own one: states, a timer heap, and a virtual
clock that follows acceptance time.

Processing time for an event is its acceptance time (the embedded journal's, or the Kafka
timestamp the ingest set), and a timer is processed at its due time (or the shard clock,
if later). A replay after a crash or a rebalance therefore makes the same decisions and
idempotency keys as the first run; how late a timer really fired is measured separately
on the wall clock. Each state records the log position of the last event it includes
(``CustomerState.seq``), so an event a restored state already holds is skipped, however
many events ago it was.
"""

from __future__ import annotations

from engine.clock import VirtualClock
from engine.driver import Driver, OutputHandler
from engine.output import Output
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import SEGMENT_TIMER, CustomerState
from state.memory import MemoryStore, MemoryTimers

__all__ = ["Shard"]


class Shard:
    """A driver over one shard; ``dirty``: customers changed since the last snapshot."""

    def __init__(self, index: int, ruleset: RuleSet, on_output: OutputHandler) -> None:
        self.index = index
        self.store = MemoryStore()
        self.timers = MemoryTimers()
        self.clock = VirtualClock(0)
        self.driver = Driver(
            ruleset, store=self.store, timers=self.timers, clock=self.clock, on_output=self._output
        )
        self.driver.local_forwards = False  # the runtime routes them to their owners
        self._on_output = on_output
        self.dirty: set[str] = set()

    def _output(self, out: Output) -> None:
        if out.customer_id:
            self.dirty.add(out.customer_id)
        self._on_output(out)

    def set_ruleset(self, ruleset: RuleSet) -> None:
        self.driver.processor.ruleset = ruleset

    def load(self, st: CustomerState) -> None:
        """Restore a snapshotted state and its timers (compacted at the next sweep)."""
        self.store.put(st)
        self.store.touch(st.customer_id, 0)
        for inst in (st.flows or {}).values():
            if inst.due is not None:
                self.timers.schedule(st.customer_id, inst.rule_id, inst.due)
        if st.segments_due is not None:
            self.timers.schedule(st.customer_id, SEGMENT_TIMER, st.segments_due)

    def apply_at(self, position: int, accepted_at: int, event: Event) -> Output | None:
        """Fire timers due up to ``accepted_at``, then process the event at that time and
        record ``position`` (its place in the log, > 0) in the customer's state. None when
        the state already includes that position (a replay)."""
        self.driver.fire_due(accepted_at)
        self.clock.set(accepted_at)
        st = self.store.get(event.customer_id)
        if st is not None and st.seq >= position:
            return None
        out = self.driver.process(event)
        st = self.store.get(event.customer_id)
        if st is not None:
            st.seq = position
        return out

    def erase(self, customer_id: str) -> bool:
        """Drop the customer's state and its timers; False when there was none. The
        runtimes add what their storage needs (a checkpoint delete, a tombstone)."""
        st = self.store.get(customer_id)
        if st is None:
            return False
        for inst in (st.flows or {}).values():
            self.timers.cancel(customer_id, inst.rule_id)
        self.timers.cancel(customer_id, SEGMENT_TIMER)
        self.store.delete(customer_id)
        self.dirty.discard(customer_id)
        return True

    def fire_until(self, t: int) -> int:
        """Fire every timer due at or before ``t``; returns how many fired."""
        return self.driver.fire_due(t)
