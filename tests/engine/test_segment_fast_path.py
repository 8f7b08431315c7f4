"""The Python fast path of segment conditions answers exactly what CEL answers, and the
segment timer kept up incrementally is the full recount's."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scope import RuleScope
from engine.testing import RuleKit
from rules.ruleset import load_ruleset
from rules.segments import fast_terms
from state.windows import next_change_of, next_crossing

STOCK = load_ruleset(["rules/recipes", "rules/segments/stock.yaml"])
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "product_viewed",
                "cart_item_added",
                "order_completed",
                "checkout_started",
                "cart_item_removed",
                "order_refunded",
            ]
        ),
        st.integers(0, 3),  # customer
        st.integers(0, 40 * 24),  # hours later
        st.sampled_from([0.0, 19.5, 250.0, 600.0]),
    ),
    max_size=25,
)


def test_every_stock_segment_takes_the_fast_path() -> None:
    assert STOCK.segments
    assert all(seg.terms is not None for seg in STOCK.segments)
    # and all of them read straight off the state, without a scope
    assert all(seg.direct is not None for seg in STOCK.segments)


def test_conditions_beyond_simple_comparisons_go_to_cel() -> None:
    assert fast_terms("customer.orders > 0 || cart.items > 0") is None
    assert fast_terms("customer.attributes['src'] == 'ads'") is None
    assert fast_terms("customer.predicted.p_alive < x") is None
    assert fast_terms("!(customer.orders > 0)") is None


@settings(max_examples=60, deadline=None)
@given(EVENTS)
def test_fast_path_equals_cel(events: list[tuple[str, int, int, float]]) -> None:
    kit = RuleKit(STOCK)
    start = kit.now
    for i, (etype, c, hours, amount) in enumerate(events):
        at = start + hours * 3_600_000
        if at > kit.now:
            kit.advance(hours=(at - kit.now) / 3_600_000)
        props = {
            "product_viewed": {"product_id": "p1"},
            "cart_item_added": {"product_id": "p1", "price": amount},
            "cart_item_removed": {"product_id": "p1"},
            "order_completed": {"order_id": f"o{i}", "total": amount},
            "checkout_started": {},
            "order_refunded": {"order_id": f"o{i}", "amount": amount},
        }[etype]
        kit.send(etype, f"c{c}", props)
        for cid in (f"c{n}" for n in range(4)):  # all: timers moved the others
            state = kit.state(cid)
            if state is None:
                continue
            scope = RuleScope(state, kit.now, dict(STOCK.settings.default_consent))
            for seg in STOCK.segments:
                truth = seg.condition.test(scope)
                assert seg.test(scope) == truth, (seg.id, state)
                if seg.direct is not None:  # None: CEL decides (a type differs)
                    assert seg.direct(state, kit.now) in (truth, None), (seg.id, state)
                # the membership kept (baseline, per-type evaluation, timers) is the truth
                assert (seg.id in (state.segments or {})) == truth, (seg.id, state)
            if cid == f"c{c}":  # the timer, kept up incrementally, is never late: at or
                # before the next threshold crossing, at or after a bucket leaving
                crossing = next_crossing(state.counters or {}, STOCK.segment_thresholds, kit.now)
                leaving = next_change_of(state.counters or {}, STOCK.segment_windows, kit.now)
                if crossing is not None:
                    assert state.segments_due is not None
                    assert state.segments_due <= crossing
                if state.segments_due is not None:
                    assert leaving is not None
                    assert state.segments_due >= leaving


def test_rfm_segments_are_evaluated_at_orders_and_by_the_timer() -> None:
    rs = load_ruleset(["rules/segments/rfm.yaml"])
    assert len(rs.segments) == 11
    for seg in rs.segments:
        assert seg.population == frozenset({"rfm"})
        assert seg.inputs == frozenset({"order_completed", "order_refunded"})
    assert rs.segments_timed == rs.segments  # time moves R
    assert "page_viewed" not in rs.segment_plan
