"""Property: whatever passes event validation, the core processes without raising.

Bad input must never crash a worker: the edges (HTTP, the Kafka consumer, backtest)
validate every event (engine/events.py), and the core must then cope with anything that
passed: any JSON in free-form properties and context, extra keys next to the required
ones, odd time zones, custom types that rules may name. Each generated trace runs through
``nudge backtest``'s loop with every stock recipe (timers drained), twice, with identical
output; validation refusals are allowed, exceptions are not.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.backtest import action_line, backtest
from engine.testing import START
from engine.types import iso
from rules.ruleset import RuleSet, load_ruleset

RULES: RuleSet = load_ruleset()
MIN = 60_000

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
product = st.sampled_from(["p1", "p2"]) | st.text(max_size=5)
money = st.floats(-1e9, 1e12, allow_nan=False) | st.integers(-10, 10**12)
# the properties each type's rules read, with odd but valid values, plus arbitrary extras
_required: dict[str, Any] = {
    "product_viewed": st.fixed_dictionaries({"product_id": product}),
    "cart_item_added": st.fixed_dictionaries(
        {"product_id": product}, optional={"price": money, "quantity": st.integers(-5, 10**9)}
    ),
    "cart_item_removed": st.fixed_dictionaries(
        {"product_id": product}, optional={"quantity": st.integers(-5, 10**9) | st.none()}
    ),
    "order_completed": st.fixed_dictionaries({"order_id": st.text(max_size=4), "total": money}),
    "order_delivered": st.fixed_dictionaries({"order_id": st.text(max_size=4)}),
    "order_refunded": st.fixed_dictionaries(
        {"order_id": st.text(max_size=4)}, optional={"amount": json_any}
    ),
    "customer_updated": st.fixed_dictionaries(
        {},
        optional={
            "consent": st.fixed_dictionaries(
                {}, optional={"email": st.booleans() | st.none(), "sms": st.booleans()}
            ),
            "timezone": st.sampled_from(["UTC", "Asia/Kathmandu", "Nowhere/City", "", "../x"]),
            "attributes": st.dictionaries(st.text(max_size=5), json_any, max_size=40),
        },
    ),
    "email_opened": st.just({}),
    "page_viewed": st.just({}),
    "product_back_in_stock": st.just({}),
    "wishlist_shared": st.just({}),
}


def _event(etype: str) -> Any:
    return st.tuples(
        _required[etype],
        st.dictionaries(st.text(max_size=6), json_any, max_size=3),  # extra properties
        st.fixed_dictionaries({}, optional={"timezone": json_any, "channel": json_any}),
    )


step = st.tuples(
    st.sampled_from(sorted(_required)),
    st.sampled_from(["c1", "c2"]),
    st.integers(0, 5 * 24 * 60),  # minutes after the previous event
).flatmap(lambda t: st.tuples(st.just(t), _event(t[0])))


def _lines(steps: list[Any]) -> list[bytes]:
    out, t = [], START
    for i, ((etype, cid, gap), (required, extra, context)) in enumerate(steps):
        t += gap * MIN
        props = {**extra, **required}
        ev = {
            "event_id": f"e{i}",
            "type": etype,
            "customer_id": cid,
            "timestamp": iso(t),
            "properties": props,
            "context": context,
        }
        out.append(orjson.dumps(ev))
    return out


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(step, min_size=1, max_size=25))
def test_valid_events_never_break_the_core(steps: list[Any]) -> None:
    lines = _lines(steps)
    first = backtest(RULES, lines)
    again = backtest(RULES, lines)
    assert [action_line(a) for a in first.actions] == [action_line(a) for a in again.actions]
    assert first.events + len(first.rejected) == len(lines)
