"""When a segment reading ``customer.predicted`` next turns with no event (docs/segments.md).

Predictions drift continuously with the customer's age (engine/intelligence/clv.py): with
the state standing still, ``p_alive`` falls, ``churn_risk`` rises, expected orders and
value fall, the next order moves out. No instant can be read off the condition the way a
window's bucket or an RFM cut point gives one, so it is searched: the conditions are
evaluated, with the state as it is, at ``now`` plus 1 hour, 2, 4, ... up to
``HORIZON_MS``; at the first sample where any membership differs from now, the interval
before it is bisected down to ``RESOLUTION_MS``. The segment timer is set there, so the
change happens within a minute of the instant the condition turns, at the cost of ~30
evaluations when a buyer's predicted segments are evaluated (their orders, the timer,
a backfill), not at every event. A membership that would begin and end between two
samples (a condition true only for a while as time passes) is not seen; none of the
predicted fields moves back and forth on its own, so a comparison with a constant, or
a conjunction of them, turns at most once per field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.scope import RuleScope
from rules.expressions import ExpressionError
from rules.segments import CompiledSegment
from state.customer import CustomerState

if TYPE_CHECKING:
    from engine.intelligence.population import Population

__all__ = ["FIRST_STEP_MS", "HORIZON_MS", "RESOLUTION_MS", "next_flip"]

FIRST_STEP_MS = 3_600_000
"""The first sample after now (an hour); each next one doubles the distance."""
HORIZON_MS = 400 * 86_400_000
"""How far ahead the search looks (400 days); past it, the timer comes back then to look
again."""
RESOLUTION_MS = 60_000
"""How close to the turn the bisection gets (a minute)."""


def _members(
    segments: tuple[CompiledSegment, ...],
    st: CustomerState,
    at: int,
    consent: dict[str, bool],
    population: Population,
) -> tuple[bool | None, ...]:
    scope = RuleScope(st, at, consent, population=population)
    out: list[bool | None] = []
    for seg in segments:
        try:
            out.append(seg.test(scope))
        except ExpressionError:
            out.append(None)  # an error keeps the membership: not a turn
    return tuple(out)


def _differs(a: tuple[bool | None, ...], b: tuple[bool | None, ...]) -> bool:
    return any(x is not None and y is not None and x != y for x, y in zip(a, b, strict=True))


def next_flip(
    segments: tuple[CompiledSegment, ...],
    st: CustomerState,
    now: int,
    consent: dict[str, bool],
    population: Population,
) -> int | None:
    """The first instant after ``now`` at which one of ``segments`` (those reading
    predictions) would hold another membership for ``st`` as it stands, to within
    ``RESOLUTION_MS`` (at or after the turn); ``now + HORIZON_MS`` when none turns before;
    None when predictions are null for the customer (no model, no order)."""
    if population.clv is None or st.orders <= 0 or not segments:
        return None
    base = _members(segments, st, now, consent, population)
    lo, step, end = now, FIRST_STEP_MS, now + HORIZON_MS
    while lo < end:
        hi = min(lo + step, end)
        if _differs(_members(segments, st, hi, consent, population), base):
            while hi - lo > RESOLUTION_MS:
                mid = (lo + hi) // 2
                if _differs(_members(segments, st, mid, consent, population), base):
                    hi = mid
                else:
                    lo = mid
            return hi
        lo, step = hi, step * 2
    return end
