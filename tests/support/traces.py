"""Small event traces for runtime tests whose expected actions do not depend on timing."""

from __future__ import annotations

from typing import Any

from engine.types import iso

__all__ = ["TIMING_FREE_RULES", "identity_trace", "make_events"]

TIMING_FREE_RULES = {
    "settings.yaml": "kind: settings\ndefault_consent: {email: true, sms: true, webhook: true}\n",
    "order.yaml": (
        "id: order-thanks\ntrigger: {event: order_completed}\n"
        "steps:\n  - send: {channel: webhook, template: thanks}\n"
    ),
    "view.yaml": (
        "id: viewed\ntrigger: {event: product_viewed}\nreentry: always\n"
        "steps:\n  - send: {channel: webhook, template: seen, "
        "params: {p: '{{ trigger.product_id }}'}}\n"
    ),
    # reentry once: one run per customer, so what fires does not depend on how fast the
    # 1s timers fire relative to the next cart event (processing time is acceptance time);
    # and a timer that must fire with no further event
    "cart.yaml": (
        "id: cart-later\ntrigger: {event: cart_item_added}\nreentry: once\n"
        "steps:\n  - wait: 1s\n  - send: {channel: webhook, template: later}\n"
    ),
}
"""Rule files whose actions on ``make_events`` traces do not depend on processing speed."""

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
        if etype == "order_completed":  # orders count once per order id
            props = {**props, "order_id": f"{prefix}o{i}"}
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


def identity_trace(start: int, customers: int = 40, n: int = 2400) -> list[dict[str, Any]]:
    """``make_events`` under anonymous ids (``anon:c<i>``); half way, each is aliased to
    ``u<i>`` (``customer_aliased``) and goes on under its anonymous id. Before the
    aliases no cart events: their 1 s timer could fire before or after the merge, under
    either id, a timing a backtest cannot know. After, all of a known customer's inputs
    arrive through its anonymous id, in order, so the actions are timing free."""
    events = make_events(n, start, customers=customers)
    half = len(events) // 2
    for i, ev in enumerate(events):
        ev["customer_id"] = "anon:" + ev["customer_id"]
        if i < half and ev["type"] == "cart_item_added":
            ev["type"], ev["properties"] = "page_viewed", {}
    aliases = [
        {
            "event_id": f"alias-{c}",
            "type": "customer_aliased",
            "customer_id": f"anon:c{c}",
            "timestamp": iso(start + half),
            "properties": {"user_id": f"u{c}"},
        }
        for c in range(customers)
    ]
    return events[:half] + aliases + events[half:]
