"""One in-process partition of the embedded runtime: a shard (engine/shard.py) plus the
journal position it has applied and the customers erased since the last checkpoint."""

from __future__ import annotations

from engine.analytics.observe import FEEDBACK, Snapshot, observe, snapshot
from engine.analytics.tally import Tally
from engine.driver import OutputHandler
from engine.output import Output
from engine.shard import Shard
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import SEGMENT_TIMER

__all__ = ["Partition"]


class Partition(Shard):
    """``last_seq`` is the last journal entry applied. ``tally``: campaign counts not yet
    checkpointed (engine/analytics/tally.py; None: analytics off)."""

    def __init__(
        self, index: int, ruleset: RuleSet, on_output: OutputHandler, analytics: bool = False
    ) -> None:
        super().__init__(index, ruleset, on_output)
        self.last_seq = 0
        self.deleted: set[str] = set()
        self.tally: Tally | None = Tally(index) if analytics else None
        # analytics: the input being processed (its customer's flows before it, the event)
        self._pre: tuple[str, Snapshot] | None = None
        self._event: Event | None = None

    def apply(self, seq: int, accepted_at: int, event: Event) -> bool:
        """Process journal entry ``seq``. False for a duplicate event, or an entry the
        customer's state already includes (a replay after a checkpoint written while
        processing went on)."""
        self.last_seq = seq
        if self.tally is None:
            out = self.apply_at(seq, accepted_at, event)
        else:
            self.fire_until(accepted_at)  # first, so the flows seen below are the event's
            self.expect(event.customer_id, event)
            out = self.apply_at(seq, accepted_at, event)
            self._pre = self._event = None
        return out is not None and not out.duplicate

    # --- analytics (engine/analytics/) -----------------------------------------------
    def expect(self, customer_id: str, event: Event | None = None) -> None:
        """Before an input for ``customer_id`` (``event``, or a timer or segment backfill
        when None): note its open flows, to count what the input changes."""
        if self.tally is not None:
            self._pre = (customer_id, snapshot(self.store.get(customer_id)))
            self._event = event

    def fire_until(self, t: int) -> int:
        """Fire every timer due at or before ``t``; returns how many fired. With analytics,
        the driver's loop (engine/driver.py ``fire_due``) with each customer's flows noted
        first."""
        if self.tally is None:
            return self.driver.fire_due(t)
        drv = self.driver
        pop = self.timers.pop_due
        clock = self.clock
        fired = 0
        while (item := pop(t)) is not None:
            due, cid, rid = item
            clock.set(due)
            self.expect(cid)
            drv._emit(drv.processor.on_timer(cid, rid, due, clock.now()))
            fired += 1
        self._pre = None
        return fired

    def _output(self, out: Output) -> None:
        tally = self.tally
        cid = out.customer_id
        if tally is not None and cid:
            pre = self._pre[1] if self._pre is not None and self._pre[0] == cid else None
            event = self._event if out.timer_due is None else None
            if event is not None and event.customer_id != cid:
                event = None
            st = self.store.get(cid)
            if (
                pre is not None
                or out.fires
                or out.conversions
                or (st is not None and st.flows)
                or (event is not None and event.type in FEEDBACK)
            ):
                rs = self.driver.processor.ruleset
                observe(rs, pre, st, out, event, self.clock.now(), tally.adder(cid))
                tally.drop_empty(cid)
        super()._output(out)

    # --- customers -------------------------------------------------------------------
    def erase(self, customer_id: str) -> bool:
        st = self.store.get(customer_id)
        if st is None:
            return False
        for inst in (st.flows or {}).values():
            self.timers.cancel(customer_id, inst.rule_id)
        self.timers.cancel(customer_id, SEGMENT_TIMER)
        self.store.delete(customer_id)
        self.dirty.discard(customer_id)
        self.deleted.add(customer_id)
        if self.tally is not None:
            self.tally.orphan(customer_id)
        return True

    def take_dirty(self) -> tuple[list[str], list[str]]:
        """The customers changed and the customers erased since the last call."""
        dirty, deleted = list(self.dirty), list(self.deleted)
        self.dirty = set()
        self.deleted = set()
        return dirty, deleted

    def restore_dirty(self, dirty: list[str], deleted: list[str]) -> None:
        """Give back what ``take_dirty`` returned, for a checkpoint that failed: the next
        one writes them again (a state erased since is skipped then)."""
        self.dirty.update(dirty)
        self.deleted.update(deleted)
