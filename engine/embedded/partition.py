"""One in-process partition of the embedded runtime: a shard (engine/shard.py) plus the
journal position it has applied and the customers erased since the last checkpoint."""

from __future__ import annotations

from engine.analytics.observe import FEEDBACK, Snapshot, observe
from engine.analytics.tally import Tally
from engine.driver import OutputHandler
from engine.output import Output
from engine.shard import Shard
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import SEGMENT_TIMER, CustomerState, FlowInstance

__all__ = ["Partition"]

_Noted = list[tuple[str, FlowInstance, int, int | None]] | None
"""A customer's open flows before an input: (rule id, instance, its pc, its due)."""


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
        self._pre: tuple[str, _Noted] | None = None
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
    # Per input, the customer's open flows are noted before it (``expect``: a tuple per
    # flow of the instance object and its pc and due, which are the only fields a flow
    # changes in place) and its output is counted after it (``_output``). An output with
    # no fires, conversions or feedback event whose customer's flows are the same objects
    # at the same pc and due counts nothing (``observe`` would add no cell), so it is
    # skipped without building anything; only the others build ``observe``'s snapshot.
    def expect(self, customer_id: str, event: Event | None = None) -> None:
        """Before an input for ``customer_id`` (``event``, or a timer or segment backfill
        when None): note its open flows, to count what the input changes."""
        if self.tally is not None:
            st = self.store.get(customer_id)
            flows = st.flows if st is not None else None
            self._pre = (
                customer_id,
                [(r, i, i.pc, i.due) for r, i in flows.items()] if flows else None,
            )
            self._event = event

    def fire_until(self, t: int) -> int:
        """Fire every timer due at or before ``t``; returns how many fired. With analytics,
        the driver's loop (engine/driver.py ``fire_due``) with each customer's flows noted
        first."""
        if self.tally is None:
            return self.driver.fire_due(t)
        timers = self.timers
        if (due := timers.next_due()) is None or due > t:
            return 0
        drv = self.driver
        pop = timers.pop_due
        clock = self.clock
        on_timer = drv.processor.on_timer
        expect = self.expect
        fired = 0
        while (item := pop(t)) is not None:
            due, cid, rid = item
            clock.set(due)
            expect(cid)
            drv._emit(on_timer(cid, rid, due, clock.now()))
            fired += 1
        self._pre = None
        return fired

    def _output(self, out: Output) -> None:
        tally = self.tally
        cid = out.customer_id
        if tally is not None and cid:
            noted = self._pre
            st = self.store.get(cid)
            post = st.flows if st is not None else None
            event = self._event  # the input, if an event of this customer's
            if event is not None and (out.timer_due is not None or event.customer_id != cid):
                event = None
            if noted is not None and noted[0] == cid:
                pre = noted[1]
                # inline, not a function: this runs for every output
                if out.fires or out.conversions:
                    count = True
                elif not pre:
                    count = bool(post)
                elif not post or len(post) != len(pre):
                    count = True
                else:  # the same instances at the same pc and due: nothing to count
                    count = False
                    for r, inst, pc, due in pre:
                        if post.get(r) is not inst or inst.pc != pc or inst.due != due:
                            count = True
                            break
                if count or (event is not None and event.type in FEEDBACK):
                    self._observe(tally, cid, _snap(pre), st, out, event)
            elif post or out.fires or out.conversions or (event and event.type in FEEDBACK):
                self._observe(tally, cid, None, st, out, event)
        Shard._output(self, out)

    def _observe(
        self,
        tally: Tally,
        cid: str,
        pre: Snapshot,
        st: CustomerState | None,
        out: Output,
        event: Event | None,
    ) -> None:
        counts = tally.counts(cid)
        observe(self.driver.processor.ruleset, pre, st, out, event, self.clock.now(), counts)
        if not counts:
            tally.drop_empty(cid)

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


def _snap(pre: _Noted) -> Snapshot:
    if not pre:
        return None
    return {r: (i.instance_id, i.version, i.variant, pc, due) for r, i, pc, due in pre}
