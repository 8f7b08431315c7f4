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

from engine.driver import OutputHandler
from engine.output import Output
from engine.shard import Shard
from engine.types import Event
from rules.ruleset import RuleSet
from state.customer import CustomerState

__all__ = ["OwnedPartition"]


class OwnedPartition(Shard):
    """A shard (engine/shard.py) for one Kafka partition; ``last_offset``: the last offset
    applied. States record offset + 1 as their log position."""

    def __init__(self, index: int, ruleset: RuleSet, on_output: OutputHandler) -> None:
        super().__init__(index, ruleset, on_output)
        self.last_offset = -1
        self.erased: set[str] = set()  # since the last take_erased: changelog tombstones

    def apply(self, offset: int, accepted_at: int, event: Event) -> Output | None:
        """Process the event at ``offset``; None when the customer's state already
        includes it (a reprocessing after a crash or rebalance)."""
        if offset > self.last_offset:
            self.last_offset = offset
        out = self.apply_at(offset + 1, accepted_at, event)
        if out is not None:
            self.dirty.add(event.customer_id)
        return out

    def erase(self, customer_id: str) -> bool:
        """Drop the customer's state and timers (a changelog tombstone follows, see
        :meth:`take_erased`); False when there was none."""
        if not super().erase(customer_id):
            return False
        self.erased.add(customer_id)
        return True

    def take_erased(self) -> list[str]:
        """The customers erased since the last call (their tombstones to write)."""
        out, self.erased = sorted(self.erased), set()
        return out

    def take_dirty(self) -> list[CustomerState]:
        """The states changed since the last call."""
        get = self.store.get
        out = [st for cid in self.dirty if (st := get(cid)) is not None]
        self.dirty = set()
        return out
