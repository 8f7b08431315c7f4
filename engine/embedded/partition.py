"""One in-process partition of the embedded runtime: a shard (engine/shard.py) plus the
journal position it has applied and the customers erased since the last checkpoint."""

from __future__ import annotations

from engine.driver import OutputHandler
from engine.shard import Shard
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import SEGMENT_TIMER

__all__ = ["Partition"]


class Partition(Shard):
    """``last_seq`` is the last journal entry applied."""

    def __init__(self, index: int, ruleset: RuleSet, on_output: OutputHandler) -> None:
        super().__init__(index, ruleset, on_output)
        self.last_seq = 0
        self.deleted: set[str] = set()

    def apply(self, seq: int, accepted_at: int, event: Event) -> bool:
        """Process journal entry ``seq``. False for a duplicate event, or an entry the
        customer's state already includes (a replay after a checkpoint written while
        processing went on)."""
        self.last_seq = seq
        out = self.apply_at(seq, accepted_at, event)
        return out is not None and not out.duplicate

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
