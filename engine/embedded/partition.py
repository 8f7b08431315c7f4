"""One in-process partition: a shard of customers with its own state, timers and a
virtual clock that follows acceptance time.

Processing time for an event is its acceptance time (stored in the journal), and a timer
is processed at its due time (or the partition clock, if later). That makes a replay of
the journal after a crash reproduce exactly the same decisions and idempotency keys as
the live run; how late a timer really fired is measured separately (wall clock).
"""

from __future__ import annotations

from engine.clock import VirtualClock
from engine.driver import Driver, OutputHandler
from engine.processor import Output
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import CustomerState
from state.memory import MemoryStore, MemoryTimers

__all__ = ["Partition"]


class Partition:
    """A driver over one shard. ``last_seq`` is the last journal entry applied."""

    def __init__(self, index: int, ruleset: RuleSet, on_output: OutputHandler) -> None:
        self.index = index
        self.store = MemoryStore()
        self.timers = MemoryTimers()
        self.clock = VirtualClock(0)
        self.driver = Driver(
            ruleset, store=self.store, timers=self.timers, clock=self.clock, on_output=self._output
        )
        self._on_output = on_output
        self.last_seq = 0
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()

    def _output(self, out: Output) -> None:
        if out.customer_id:
            self.dirty.add(out.customer_id)
        self._on_output(out)

    def set_ruleset(self, ruleset: RuleSet) -> None:
        self.driver.processor.ruleset = ruleset

    def load(self, st: CustomerState) -> None:
        """Restore a checkpointed state and its timers (compacted at the next sweep)."""
        self.store.put(st)
        self.store.touch(st.customer_id, 0)
        for inst in (st.flows or {}).values():
            if inst.due is not None:
                self.timers.schedule(st.customer_id, inst.rule_id, inst.due)

    def apply(self, seq: int, accepted_at: int, event: Event) -> bool:
        """Fire timers due up to ``accepted_at``, then process the event at that time.
        Returns False for a duplicate, or an entry the customer's state already includes
        (a replay after a checkpoint written while processing went on)."""
        self.fire_until(accepted_at)
        self.clock.set(accepted_at)
        self.last_seq = seq
        st = self.store.get(event.customer_id)
        if st is not None and st.seq >= seq:
            return False  # a replay: this state was checkpointed after the entry
        out = self.driver.process(event)
        st = self.store.get(event.customer_id)
        if st is not None:
            st.seq = seq
        return not out.duplicate

    def fire_until(self, t: int) -> None:
        """Fire every timer due at or before ``t``."""
        self.driver.fire_due(t)

    def erase(self, customer_id: str) -> bool:
        st = self.store.get(customer_id)
        if st is None:
            return False
        for inst in (st.flows or {}).values():
            self.timers.cancel(customer_id, inst.rule_id)
        self.store.delete(customer_id)
        self.dirty.discard(customer_id)
        self.deleted.add(customer_id)
        return True

    def take_dirty(self) -> tuple[list[str], list[str]]:
        """The customers changed and the customers erased since the last call."""
        dirty, deleted = list(self.dirty), list(self.deleted)
        self.dirty = set()
        self.deleted = set()
        return dirty, deleted
