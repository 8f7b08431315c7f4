"""Segments: ``kind: segment`` documents compiled for the processor (docs/segments.md).

A segment's condition is CEL over ``customer``, ``cart`` and ``count(type, window)``. It
holds the customer's state only, so without an event it can change only when a counted
bucket leaves a window: its ``count()`` calls (literal arguments, checked here) are kept so
the processor can work out that instant exactly (``state.windows.next_change``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.exceptions import RuleError
from rules.expressions import Expression, ExpressionError
from rules.loader import Positions
from rules.spec import SegmentSpec
from state.windows import WINDOWS

__all__ = ["SEGMENT_VARIABLES", "CompiledSegment", "compile_segment"]

SEGMENT_VARIABLES = frozenset({"customer", "cart"})


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    """A segment ready to evaluate; ``counts``: the (type, window) its condition counts."""

    id: str
    description: str
    condition: Expression
    counts: tuple[tuple[str, str], ...]


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
    return CompiledSegment(spec.id, spec.description, expr, tuple(counts)), []
