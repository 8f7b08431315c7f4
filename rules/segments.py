"""Segments: ``kind: segment`` documents compiled for the processor (docs/segments.md).

A segment's condition is CEL over ``customer``, ``cart`` and ``count(type, window)``. It
holds the customer's state only, so without an event it can change only when a counted
bucket leaves a window: its ``count()`` calls (literal arguments, checked here) are kept so
the processor can work out that instant exactly (``state.windows.next_change``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.exceptions import RuleError
from rules.expressions import Expression, ExpressionError, Scope
from rules.loader import Positions
from rules.spec import SegmentSpec
from state.windows import WINDOWS

__all__ = ["SEGMENT_VARIABLES", "CompiledSegment", "compile_segment", "input_types"]

SEGMENT_VARIABLES = frozenset({"customer", "cart"})


# what each input type can change of what a condition reads (engine/profile.py)
_CART_TYPES = frozenset(
    {"cart_item_added", "cart_item_removed", "cart_replaced", "order_completed"}
)
_ORDER_TYPES = frozenset({"order_completed", "order_refunded"})
_PROFILE_TYPES = frozenset({"customer_updated", "customer_signed_up"})
_CONSENT_TYPES = _PROFILE_TYPES | {
    "email_unsubscribed",
    "email_spam_reported",
    "email_resubscribed",
    "sms_unsubscribed",
    "sms_resubscribed",
}
_CUSTOMER_KEYS: dict[str, frozenset[str]] = {
    "orders": _ORDER_TYPES,
    "ltv": _ORDER_TYPES,
    "aov": _ORDER_TYPES,
    "first_order": _ORDER_TYPES,
    "last_order": _ORDER_TYPES,
    "consent": _CONSENT_TYPES,
    "attributes": _PROFILE_TYPES,
}


def input_types(expr: Expression) -> frozenset[str] | None:
    """The event types whose processing can change ``expr``'s value (with the time
    standing still), or None when any event can (it reads ``last_seen``, the time zone,
    the whole customer map...). A merge (``customer_merged``) can change anything and is
    always evaluated; so is a customer's first event."""
    types: set[str] = set()
    if "cart" in expr.variables:
        types |= _CART_TYPES
    if "customer" in expr.variables:
        keys = expr.keys["customer"]
        if keys is None or not keys <= _CUSTOMER_KEYS.keys():
            return None
        for key in keys:
            types |= _CUSTOMER_KEYS[key]
    types |= {etype for fn, etype, _ in expr.calls if fn == "count"}
    return frozenset(types)


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    """A segment ready to evaluate; ``counts``: the (type, window) its condition counts;
    ``inputs``: the event types that can change it (None: any)."""

    id: str
    description: str
    condition: Expression
    counts: tuple[tuple[str, str], ...]
    inputs: frozenset[str] | None

    def test(self, scope: Scope) -> bool:
        """Whether the customer ``scope`` shows is in the segment (CEL errors raise)."""
        return self.condition.test(scope)


def compile_segment(
    spec: SegmentSpec, pos: Positions
) -> tuple[CompiledSegment | None, list[RuleError]]:
    """The compiled segment, or None and every error found (file, line, reason)."""
    key = ("condition",)
    try:
        expr = Expression(spec.condition)
    except ExpressionError as err:
        return None, [pos.error(key, f"expression: {err.message}", err.column)]
    errors: list[RuleError] = []
    for var in sorted(set(expr.variables) - SEGMENT_VARIABLES):
        errors.append(pos.error(key, f"a segment condition cannot use {var!r}: customer, cart"))
    for fn in expr.functions:
        if fn != "count":
            errors.append(pos.error(key, f"a segment condition cannot call {fn}()"))
    if expr.dynamic_calls:
        errors.append(pos.error(key, "count() arguments must be literal strings in a segment"))
    counts = []
    for fn, etype, window in expr.calls:
        if fn == "count":
            if window not in WINDOWS:
                errors.append(
                    pos.error(key, f"count(): unknown window {window!r}; use {', '.join(WINDOWS)}")
                )
            else:
                counts.append((etype, window))
    if errors:
        return None, errors
    return CompiledSegment(spec.id, spec.description, expr, tuple(counts), input_types(expr)), []
