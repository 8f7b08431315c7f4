"""One in-process partition of the embedded runtime: a shard (engine/shard.py) plus the
journal position it has applied and the customers erased since the last checkpoint."""

from __future__ import annotations

from engine.analytics.observe import FEEDBACK, observe
from engine.analytics.tally import Tally
from engine.driver import OutputHandler
from engine.output import Output
from engine.shard import Shard
from engine.types import Event
from rules.ruleset import RuleSet

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
        self.driver.processor.notes = analytics  # what the flows did, for the counts
        self._event: Event | None = None  # analytics: the event being processed

    def apply(self, seq: int, accepted_at: int, event: Event) -> bool:
        """Process journal entry ``seq``. False for a duplicate event, or an entry the
        customer's state already includes (a replay after a checkpoint written while
        processing went on)."""
        self.last_seq = seq
        if self.tally is None:
            out = self.apply_at(seq, accepted_at, event)
        else:
            self.fire_until(accepted_at)  # first: their outputs are not the event's
            self._event = event
            out = self.apply_at(seq, accepted_at, event)
            self._event = None
        return out is not None and not out.duplicate

    # --- analytics (engine/analytics/) -----------------------------------------------
    # The processor notes what flows do (``Output.notes``); an output with no note,
    # conversion or feedback event counts nothing and is skipped without a lookup.
    def _output(self, out: Output) -> None:
        tally = self.tally
        cid = out.customer_id
        if tally is not None and cid:
            event = self._event  # the input, if an event of this customer's
            if event is not None and (out.timer_due is not None or event.customer_id != cid):
                event = None
            if out.notes or out.conversions or (event is not None and event.type in FEEDBACK):
                counts = tally.counts(cid)
                rs = self.driver.processor.ruleset
                observe(rs, self.store.get(cid), out, event, self.clock.now(), counts)
                if not counts:
                    tally.drop_empty(cid)
        Shard._output(self, out)

    # --- customers -------------------------------------------------------------------
    def erase(self, customer_id: str) -> bool:
        """Shard.erase, and the checkpoint deletes it; its pending counts are orphaned."""
        if not super().erase(customer_id):
            return False
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
