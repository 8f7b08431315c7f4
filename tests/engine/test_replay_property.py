"""Property: replaying a trace, or the trace with duplicated events, yields identical actions."""

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

_props: dict[str, Any] = {
    "product_viewed": st.fixed_dictionaries({"product_id": st.sampled_from(["p1", "p2", "p3"])}),
    "cart_item_added": st.fixed_dictionaries(
        {
            "product_id": st.sampled_from(["p1", "p2"]),
            "price": st.sampled_from([5.0, 19.99, 120.0]),
            "quantity": st.integers(1, 3),
        }
    ),
    "cart_item_removed": st.fixed_dictionaries({"product_id": st.sampled_from(["p1", "p2"])}),
    "order_completed": st.fixed_dictionaries(
        {
            "order_id": st.sampled_from(["o1", "o2", "o3"]),
            "total": st.sampled_from([10.0, 99.5, 300.0]),
        }
    ),
    "order_delivered": st.fixed_dictionaries({"order_id": st.just("o1")}),
    "order_refunded": st.fixed_dictionaries({"order_id": st.just("o1"), "amount": st.just(10.0)}),
    "customer_signed_up": st.fixed_dictionaries(
        {
            "consent": st.fixed_dictionaries({"sms": st.booleans(), "email": st.booleans()}),
            "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
        }
    ),
    "email_opened": st.just({}),
    "page_viewed": st.just({}),
}

step = st.tuples(
    st.sampled_from(sorted(_props)),
    st.sampled_from(["c1", "c2", "c3"]),
    st.integers(0, 6 * 60),  # minutes after the previous event
    st.integers(-120, 0),  # event-time skew: late / out-of-order events
).flatmap(lambda t: st.tuples(st.just(t), _props[t[0]]))


def _lines(steps: list[Any], dup_every: int = 0) -> list[bytes]:
    out = []
    t = START
    for i, ((etype, cid, gap, skew), props) in enumerate(steps):
        t += gap * MIN
        line = orjson.dumps(
            {
                "event_id": f"e{i}",
                "type": etype,
                "customer_id": cid,
                "timestamp": iso(t + skew * MIN),
                "properties": props,
            }
        )
        out.append(line)
        if dup_every and i % dup_every == 0:
            out.append(line)
    return out


def _run(lines: list[bytes]) -> list[bytes]:
    return [action_line(a) for a in backtest(RULES, lines).sorted_actions()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=60), st.integers(1, 4))
def test_replay_and_duplicates_give_identical_actions(steps: list[Any], dup_every: int) -> None:
    lines = _lines(steps)
    first = _run(lines)
    assert _run(lines) == first
    assert _run(_lines(steps, dup_every)) == first


def test_the_property_can_fail() -> None:
    """Guard: distinct ids (not duplicates) for a repeated cart add do change the output."""
    base = [(("cart_item_added", "c1", 0, 0), {"product_id": "p1", "price": 50.0, "quantity": 1})]
    lines = _lines(base)
    again = [*lines, lines[0].replace(b'"e0"', b'"e0-bis"')]
    assert _run(lines) != _run(again)
