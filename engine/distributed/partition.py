"""One Kafka partition of the ``events`` topic as this worker owns it: decoded customer
states, a timer heap rebuilt from them, and a virtual clock that follows acceptance time.

Processing time of an event is its Kafka timestamp (set by the ingest when the broker
accepted it), and a timer is processed at its due time (or the partition clock, if
later): a reprocessing after a crash or a rebalance makes the same decisions and the
same idempotency keys as the first run. Each state records the offset (+1) of the last
event it includes (``CustomerState.seq``), so an event the restored state already holds
is skipped, however many events ago it was.
"""

from __future__ import annotations

from engine.clock import VirtualClock
from engine.driver import Driver, OutputHandler
from engine.processor import Output
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import CustomerState
from state.memory import MemoryStore, MemoryTimers

__all__ = ["OwnedPartition"]


class OwnedPartition:
    """A driver over one partition. ``dirty``: customers changed since the last write."""

    def __init__(self, index: int, ruleset: RuleSet, on_output: OutputHandler) -> None:
        self.index = index
        self.store = MemoryStore()
        self.timers = MemoryTimers()
        self.clock = VirtualClock(0)
        self.driver = Driver(
            ruleset, store=self.store, timers=self.timers, clock=self.clock, on_output=self._out
        )
        self._on_output = on_output
        self.dirty: set[str] = set()
        self.last_offset = -1

    def _out(self, out: Output) -> None:
        if out.customer_id:
            self.dirty.add(out.customer_id)
        self._on_output(out)

    def set_ruleset(self, ruleset: RuleSet) -> None:
        self.driver.processor.ruleset = ruleset

    def load(self, st: CustomerState) -> None:
        """Restore a state from the changelog, and its timers."""
        self.store.put(st)
        for inst in (st.flows or {}).values():
            if inst.due is not None:
                self.timers.schedule(st.customer_id, inst.rule_id, inst.due)

    def apply(self, offset: int, accepted_at: int, event: Event) -> Output | None:
        """Fire timers due up to ``accepted_at``, then process the event at that time.
        None when the customer's state already includes this offset (a reprocessing)."""
        if offset > self.last_offset:
            self.last_offset = offset
        st = self.store.get(event.customer_id)
        if st is not None and st.seq > offset:
            return None
        self.driver.fire_due(accepted_at)
        self.clock.set(accepted_at)
        out = self.driver.process(event)
        st = self.store.get(event.customer_id)
        if st is not None:
            st.seq = offset + 1
            self.dirty.add(event.customer_id)
        return out

    def fire_until(self, t: int) -> int:
        """Fire every timer due at or before ``t``; returns how many fired."""
        return self.driver.fire_due(t)

    def take_dirty(self) -> list[CustomerState]:
        """The states changed since the last call."""
        get = self.store.get
        out = [st for cid in self.dirty if (st := get(cid)) is not None]
        self.dirty = set()
        return out
