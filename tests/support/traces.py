"""Small event traces for runtime tests whose expected actions do not depend on timing."""

from __future__ import annotations

from typing import Any

from engine.types import iso

__all__ = ["make_events"]

_KINDS: list[tuple[str, dict[str, Any]]] = [
    ("product_viewed", {"product_id": "p1"}),
    ("cart_item_added", {"product_id": "p2", "price": 5.0}),
    ("order_completed", {"order_id": "o", "total": 12.0}),
    ("page_viewed", {}),
]


def make_events(n: int, start: int, customers: int = 97, prefix: str = "e") -> list[dict[str, Any]]:
    """``n`` events 1 ms apart from ``start``, cycling through four types and customers."""
    out = []
    for i in range(n):
        etype, props = _KINDS[i % len(_KINDS)]
        out.append(
            {
                "event_id": f"{prefix}{i}",
                "type": etype,
                "customer_id": f"c{i % customers}",
                "timestamp": iso(start + i),
                "properties": props,
            }
        )
    return out
