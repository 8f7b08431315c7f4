"""The per-customer state record and the flow instance record.

Both use ``__slots__`` and ``None`` for empty parts: most customers never open a flow or
hold a cart, and the memory budget is about 1 KB per customer. Snapshots are plain
JSON-able dicts (``to_dict``/``from_dict``) for checkpoints and the customer API.
"""

from __future__ import annotations

from array import array
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
        trigger: dict[str, Any],
    ) -> None:
        self.rule_id = rule_id
        self.version = version
        self.instance_id = instance_id
        self.started_at = started_at
        self.variant = variant
        self.trigger = trigger
        self.pc = 0
        self.due: int | None = None
        self.seen: dict[str, int] = {}
        self.marks: dict[str, int] = {}

    def to_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowInstance:
        inst = cls.__new__(cls)
        for s in cls.__slots__:
            setattr(inst, s, d[s])
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
        "timezone",
        "viewed",
    )

    def __init__(self, customer_id: str, now: int) -> None:
        self.customer_id = customer_id
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
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for s in self.__slots__:
            v = getattr(self, s)
            if s == "dedup" and v is not None:
                v = list(v)
            elif s == "flows" and v is not None:
                v = {k: f.to_dict() for k, f in v.items()}
            elif s == "counters" and v is not None:
                v = [[k, c] for k, c in v.items()]
            elif s in ("sends", "goals") and v is not None:
                v = [list(t) for t in v]
            d[s] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CustomerState:
        st = cls.__new__(cls)
        for s in cls.__slots__:
            setattr(st, s, d.get(s))
        raw: dict[str, Any] = d
        if raw.get("dedup") is not None:
            st.dedup = array("Q", raw["dedup"])
        if raw.get("flows") is not None:
            st.flows = {k: FlowInstance.from_dict(f) for k, f in raw["flows"].items()}
        if raw.get("counters") is not None:
            st.counters = {int(k): int(c) for k, c in raw["counters"]}
        if raw.get("sends") is not None:
            st.sends = [(int(t), str(r), str(c)) for t, r, c in raw["sends"]]
        if raw.get("goals") is not None:
            st.goals = [(str(r), str(v), str(g), int(a), int(b)) for r, v, g, a, b in raw["goals"]]
        return st
