"""The per-customer state record and the flow instance record.

Both use ``__slots__`` and ``None`` for empty parts: most customers never open a flow or
hold a cart, and the memory budget is about 1 KB per customer. Snapshots are plain
JSON-able lists (``to_row``/``from_row``) for checkpoints.
"""

from __future__ import annotations

from array import array
from operator import attrgetter
from typing import Any

__all__ = ["DEDUP_WINDOW", "VIEWED_MAX", "CustomerState", "FlowInstance"]

DEDUP_WINDOW = 32
"""Event ids remembered per customer for duplicate detection (as 64-bit fingerprints)."""
VIEWED_MAX = 5
"""Recently viewed products kept per customer, most recent last."""


class FlowInstance:
    """One open run of a rule for a customer. ``pc`` indexes the compiled rule's op list;
    ``due`` is the pending timer (None: no timer). ``seen`` maps event type to the last
    event time seen since the flow started; ``marks`` maps step names to when they ran."""

    __slots__ = (
        "due",
        "instance_id",
        "marks",
        "pc",
        "rule_id",
        "seen",
        "started_at",
        "trigger",
        "variant",
        "version",
    )

    def __init__(
        self,
        rule_id: str,
        version: int,
        instance_id: str,
        started_at: int,
        variant: str,
        trigger: dict[str, Any] | None,
    ) -> None:
        self.rule_id = rule_id
        self.version = version
        self.instance_id = instance_id
        self.started_at = started_at
        self.variant = variant
        self.trigger = trigger
        self.pc = 0
        self.due: int | None = None
        # created on first use: most instances wait without seeing anything
        self.seen: dict[str, int] | None = None
        self.marks: dict[str, int] | None = None

    def to_row(self) -> list[Any]:
        return list(_FLOW_SLOTS(self))

    @classmethod
    def from_row(cls, row: list[Any]) -> FlowInstance:
        inst = cls.__new__(cls)
        for s, v in zip(cls.__slots__, row, strict=True):
            setattr(inst, s, v)
        return inst


class CustomerState:
    """Everything Nudge knows about one customer."""

    __slots__ = (
        "attributes",
        "cart",
        "cart_updated",
        "consent",
        "counters",
        "customer_id",
        "dedup",
        "entries",
        "first_order",
        "first_seen",
        "flows",
        "goals",
        "last_order",
        "last_seen",
        "orders",
        "revenue",
        "sends",
        "seq",
        "timezone",
        "viewed",
    )

    def __init__(self, customer_id: str, now: int) -> None:
        self.customer_id = customer_id
        self.seq = 0  # last journal entry applied (runtimes), so replays skip what is in
        self.first_seen = now
        self.last_seen = now
        self.timezone: str | None = None
        self.consent: dict[str, bool] | None = None
        self.attributes: dict[str, Any] | None = None
        self.orders = 0
        self.revenue = 0.0
        self.first_order: int | None = None
        self.last_order: int | None = None
        # product_id -> [quantity, unit price]
        self.cart: dict[str, list[float]] | None = None
        self.cart_updated: int | None = None
        self.viewed: list[str] | None = None
        self.counters: dict[int, int] | None = None
        self.dedup: array[int] | None = None
        self.flows: dict[str, FlowInstance] | None = None
        # rule_id -> last time a flow of that rule was entered
        self.entries: dict[str, int] | None = None
        # recent sends for frequency caps: (time, rule_id, channel)
        self.sends: list[tuple[int, str, str]] | None = None
        # open experiment goal windows: (rule_id, variant, goal event type, start, deadline)
        self.goals: list[tuple[str, str, str, int, int]] | None = None

    # --- derived views -------------------------------------------------------------
    @property
    def cart_value(self) -> float:
        if not self.cart:
            return 0.0
        return round(sum(q * p for q, p in self.cart.values()), 2)

    @property
    def cart_items(self) -> int:
        if not self.cart:
            return 0
        return int(sum(q for q, _ in self.cart.values()))

    @property
    def aov(self) -> float:
        return round(self.revenue / self.orders, 2) if self.orders else 0.0

    # --- snapshots -----------------------------------------------------------------
    def to_row(self) -> list[Any]:
        """A JSON-able list of the slots in ``__slots__`` order (checkpoints: cheaper than a
        dict; ``from_row`` reads it back)."""
        row: list[Any] = list(_SLOTS(self))  # attrgetter: one C call for all slots
        if self.dedup is not None:
            row[_DEDUP] = list(self.dedup)
        if self.flows is not None:
            row[_FLOWS] = [f.to_row() for f in self.flows.values()]
        if self.counters is not None:
            row[_COUNTERS] = list(self.counters.items())
        return row

    @classmethod
    def from_row(cls, row: list[Any]) -> CustomerState:
        st = cls.__new__(cls)
        for s, v in zip(cls.__slots__, row, strict=True):
            setattr(st, s, v)
        if st.dedup is not None:
            st.dedup = array("Q", row[_DEDUP])
        if row[_FLOWS] is not None:
            flows = [FlowInstance.from_row(f) for f in row[_FLOWS]]
            st.flows = {f.rule_id: f for f in flows}
        if row[_COUNTERS] is not None:
            st.counters = {int(k): int(c) for k, c in row[_COUNTERS]}
        if row[_SENDS] is not None:
            st.sends = [(int(t), str(r), str(c)) for t, r, c in row[_SENDS]]
        if row[_GOALS] is not None:
            st.goals = [(str(r), str(v), str(g), int(a), int(b)) for r, v, g, a, b in row[_GOALS]]
        return st


_SLOTS = attrgetter(*CustomerState.__slots__)
_FLOW_SLOTS = attrgetter(*FlowInstance.__slots__)
_DEDUP = CustomerState.__slots__.index("dedup")
_FLOWS = CustomerState.__slots__.index("flows")
_COUNTERS = CustomerState.__slots__.index("counters")
_SENDS = CustomerState.__slots__.index("sends")
_GOALS = CustomerState.__slots__.index("goals")
