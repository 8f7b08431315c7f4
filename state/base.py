"""The state store interface. Backends: state/memory.py (tests, backtest, embedded cache)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from state.customer import CustomerState

__all__ = ["StateStore", "TimerStore"]


class StateStore(Protocol):
    """Customer states by id. ``get`` returns the live object: the processor mutates it in
    place and calls ``put`` only when it creates one. Which states changed is tracked by
    their owner from the outputs (engine/partition.py: every Output names its customer)."""

    def get(self, customer_id: str) -> CustomerState | None: ...

    def put(self, state: CustomerState) -> None: ...

    def delete(self, customer_id: str) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[CustomerState]: ...


class TimerStore(Protocol):
    """Pending timers, one per id (re-scheduling replaces), drained in due order.

    A timer id is ``customer_id`` + ``rule_id``: a customer has at most one open instance
    per rule and an instance at most one deadline."""

    def schedule(self, customer_id: str, rule_id: str, due: int) -> None: ...

    def cancel(self, customer_id: str, rule_id: str) -> None: ...

    def pop_due(self, now: int) -> tuple[int, str, str] | None:
        """The earliest timer due at or before ``now`` as (due, customer_id, rule_id),
        removed; None when nothing is due. Ties break by customer id, then the order set by
        :meth:`order` (the rule set's priority), then rule id."""
        ...

    def order(self, ranks: dict[str, int]) -> None:
        """Rank one customer's timers due at the same instant: rule id -> rank, lowest
        first; ids not in ``ranks`` (the segment timer, removed rules) after them."""
        ...

    def next_due(self) -> int | None: ...

    def __len__(self) -> int: ...
