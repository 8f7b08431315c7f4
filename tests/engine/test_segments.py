"""Segments in the pure core, under the virtual clock: membership changes on events and,
with no event, at the instant a counted window lets the condition turn (the segment
timer); entries and exits trigger and end flows."""

from __future__ import annotations

import pytest

from engine.partition import Partition
from engine.testing import RuleKit
from rules.exceptions import RuleErrors
from state.customer import SEGMENT_TIMER, pack, unpack

DAY = 86_400_000
SETTINGS = "kind: settings\ndefault_consent: {email: true, sms: true, webhook: true}\n"
CARTED = """
kind: segment
id: carted-not-bought
condition: "count('cart_item_added', '7d') > 0 && count('order_completed', '7d') == 0"
"""
LAPSED = """
kind: segment
id: lapsed
description: ordered before, not in the last 90 days
condition: "customer.orders > 0 && count('order_completed', '90d') == 0"
"""
WINBACK = """
id: lapsed-winback
trigger: {segment_entered: lapsed}
exit_on: [{event: order_completed}]
steps:
  - send: {channel: email, template: we_miss_you}
  - wait: 7d
  - send: {channel: email, template: we_miss_you_10pct}
"""
NUDGE = """
id: carted-nudge
trigger: {segment_entered: carted-not-bought}
exit_on: [{segment_exited: carted-not-bought}]
steps:
  - wait: 1d
  - send: {channel: email, template: still_thinking}
"""


def kit(*docs: str) -> RuleKit:
    return RuleKit.from_yaml(SETTINGS, CARTED, LAPSED, *docs)


def test_carted_not_bought_enters_on_add_and_leaves_on_order() -> None:
    k = kit()
    k.send("cart_item_added", "c1", {"product_id": "p1", "price": 5.0})
    assert set(k.state("c1").segments) == {"carted-not-bought"}
    assert k.state("c1").segments["carted-not-bought"] == k.now
    k.advance(hours=2)
    k.send("order_completed", "c1", {"order_id": "o1", "total": 5.0})
    st = k.state("c1")
    assert st.segments is None
    assert st.segments_left == {"carted-not-bought": k.now}


def test_lapsed_flips_on_its_own_at_90_days_and_starts_the_winback() -> None:
    k = kit(WINBACK)
    k.send("order_completed", "c1", {"order_id": "o1", "total": 30.0})
    ordered = k.now
    st = k.state("c1")
    assert st.segments is None
    # the day bucket of the order leaves the 90-day window at the end of its day + 90 d
    flip = (ordered // DAY + 1) * DAY + 90 * DAY
    # the earliest instant any condition can change: the order leaving carted-not-bought's
    # 7-day window; that re-evaluation changes nothing and schedules the 90-day one
    assert st.segments_due == (ordered // DAY + 1) * DAY + 7 * DAY
    k.advance(days=9)
    assert k.state("c1").segments_due == flip
    k.advance(days=81)  # not yet: the order's day is still inside the window
    assert k.sent("lapsed-winback") == []
    k.advance(days=1)  # no event at all: the segment timer alone
    assert k.state("c1").segments == {"lapsed": flip}
    [mail] = k.sent("lapsed-winback")
    assert (mail.template, mail.fire_at) == ("we_miss_you", flip)  # at the flip, not later
    k.send("order_completed", "c1", {"order_id": "o2", "total": 30.0})
    assert k.state("c1").segments is None  # ordered again: out of lapsed, flow exited
    k.advance(days=8)
    assert [a.template for a in k.sent("lapsed-winback")] == ["we_miss_you"]


def test_a_segment_exit_ends_the_flow_it_started() -> None:
    k = kit(NUDGE)
    k.send("cart_item_added", "c1", {"product_id": "p1", "price": 5.0})
    k.advance(hours=3)
    k.send("order_completed", "c1", {"order_id": "o1", "total": 5.0})
    k.advance(days=2)
    assert k.sent("carted-nudge") == []
    k.send("cart_item_added", "c2", {"product_id": "p1", "price": 5.0})
    k.advance(days=2)
    assert [a.customer_id for a in k.sent("carted-nudge")] == ["c2"]


def test_membership_leaves_when_the_window_empties_without_an_event() -> None:
    k = kit()
    k.send("cart_item_added", "c1", {"product_id": "p1", "price": 5.0})
    added = k.now
    k.advance(days=8)
    st = k.state("c1")
    assert st.segments is None
    assert st.segments_left == {"carted-not-bought": (added // DAY + 1) * DAY + 7 * DAY}


def test_segment_since_and_customer_segments_in_rules() -> None:
    rule = """
id: vip-ish
trigger: {event: page_viewed}
when: "'carted-not-bought' in customer.segments && segment_since('carted-not-bought') > 0"
steps:
  - send: {channel: webhook, template: hi}
"""
    k = kit(rule)
    k.send("page_viewed", "c1")
    k.send("cart_item_added", "c1", {"product_id": "p1", "price": 5.0})
    k.send("page_viewed", "c1")
    assert len(k.sent("vip-ish")) == 1


def test_the_segment_timer_survives_a_restore() -> None:
    k = kit()
    k.send("order_completed", "c1", {"order_id": "o1", "total": 30.0})
    st = k.state("c1")
    shard = Partition(0, k.driver.processor.ruleset, lambda out: None)
    shard.recover([unpack(pack(st))])
    assert shard.timers.pop_due(st.segments_due) == (st.segments_due, "c1", SEGMENT_TIMER)


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("event.type == 'x'", "cannot use 'event'"),
        ("seen('x')", "cannot call seen()"),
        ("count('x', '2d') > 0", "unknown window '2d'"),
    ],
)
def test_bad_segments_are_rejected_with_file_and_line(condition: str, reason: str) -> None:
    doc = f'kind: segment\nid: bad\ncondition: "{condition}"\n'
    with pytest.raises(RuleErrors) as err:
        RuleKit.from_yaml(SETTINGS, doc)
    assert reason in str(err.value)
    assert ":3:" in str(err.value)  # the condition's line


def test_a_trigger_on_an_unknown_segment_is_an_error() -> None:
    with pytest.raises(RuleErrors, match="no segment 'lapsed'"):
        RuleKit.from_yaml(SETTINGS, WINBACK)


CHECKOUT = """
kind: segment
id: checkout-abandoned
condition: "count('checkout_started', '24h') > 0 && count('order_completed', '24h') == 0"
"""


def _buy_everything(k: RuleKit) -> None:
    """A cart add, a checkout and its order in the same hour: every window drops the
    checkout and the order together, and the cart with the order."""
    k.send("cart_item_added", "c1", {"product_id": "p1", "price": 5.0})
    k.send("checkout_started", "c1")
    k.send("order_completed", "c1", {"order_id": "o1", "total": 5.0})


def test_the_timer_passes_over_instants_where_no_membership_turns() -> None:
    k = kit(CHECKOUT)
    _buy_everything(k)
    ordered = k.now
    assert k.state("c1").segments is None
    # the order searched the crossings: the checkout and the order leaving the 24 hours
    # together, the cart and the order the 7 days, turn nothing; the timer is set at the
    # lapsed flip, and nothing fires before it
    flip = (ordered // DAY + 1) * DAY + 90 * DAY
    assert k.advance(days=89) == 0
    assert k.state("c1").segments is None
    k.advance(days=3)
    assert k.state("c1").segments == {"lapsed": flip}  # at the flip, on its own


def test_an_input_after_a_passed_over_instant_makes_it_count_again() -> None:
    """A cart add after the timer passed over the order leaving the 7 days: that instant
    now enters carted-not-bought (the newer add is still in the window), on time."""
    k = kit(CHECKOUT)
    _buy_everything(k)
    ordered = k.now
    k.advance(days=2)
    k.advance(days=1)
    k.send("cart_item_added", "c1", {"product_id": "p2", "price": 5.0})
    assert k.state("c1").segments is None  # the order is still in the 7 days
    k.advance(days=6)
    turn = (ordered // DAY + 1) * DAY + 7 * DAY
    assert k.state("c1").segments == {"carted-not-bought": turn}


def test_a_counted_event_can_turn_a_term_on_what_every_event_moves() -> None:
    # last_seen moves with every event: one more view, rising for the count term, can
    # still turn the segment false (the view that makes last_seen pass the limit)
    start = 1_767_225_600_000  # 2026-01-01
    limit = start + 2 * DAY
    k = RuleKit.from_yaml(
        SETTINGS,
        "kind: segment\nid: early-browser\n"
        f"condition: \"count('product_viewed', '7d') > 0 && customer.last_seen < {limit}\"\n",
        start=start,
    )
    k.send("product_viewed", "c1", {"product_id": "p1"})
    assert set(k.state("c1").segments or ()) == {"early-browser"}
    k.advance(days=3)
    k.send("product_viewed", "c1", {"product_id": "p1"})
    assert k.state("c1").segments is None
