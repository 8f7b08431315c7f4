"""Backfill of segments in the pure core (issue 16): ``Processor.backfill_segments``
evaluates every segment of the rule set for a customer evaluated under other segments,
fires entries like any segment change, marks the state with the rule set's segment digest
(a second backfill does nothing) and drops removed segments at once, without an exit."""

from __future__ import annotations

import msgspec

from engine.testing import RuleKit
from rules.ruleset import RuleSet, load_texts
from state.customer import SEGMENT_TIMER, CustomerState, load, pack, unpack
from tests.engine.test_segments import CARTED, DAY, LAPSED, SETTINGS, WINBACK


def ruleset(*docs: str) -> RuleSet:
    return load_texts((f"<rule {i}>", t) for i, t in enumerate((SETTINGS, *docs)))


def dormant(days: int) -> RuleKit:
    """c1 ordered ``days`` ago under a rule set without ``lapsed`` and has sent nothing
    since (its carted-not-bought timer came and went: its state is current for it)."""
    k = RuleKit(ruleset(CARTED))
    k.send("order_completed", "c1", {"order_id": "o1", "total": 30.0})
    k.advance(days=days)
    return k


def test_a_deployed_segment_is_backfilled_and_its_flow_reaches_existing_members() -> None:
    k = dormant(100)
    st = k.state("c1")
    assert st.segments is None
    assert st.segments_due is None  # nothing left to change on its own: no timer
    assert st.segments_digest == ruleset(CARTED).segments_digest
    proc = k.driver.processor
    proc.ruleset = rs = ruleset(CARTED, LAPSED, WINBACK)
    assert rs.segments_digest != st.segments_digest

    out = proc.backfill_segments("c1", k.now)
    k.sink(out)
    assert st.segments == {"lapsed": k.now}  # entered at the backfill's time
    assert out.segment_changes == [("c1", "lapsed", True, k.now)]
    [mail] = k.sent("lapsed-winback")
    assert (mail.template, mail.fire_at) == ("we_miss_you", k.now)
    assert st.flows["lapsed-winback"].instance_id == f"segment_entered:lapsed:{k.now}"
    assert st.segments_digest == rs.segments_digest

    again = proc.backfill_segments("c1", k.now + 1000)  # current: nothing
    assert (again.segment_changes, again.actions) == ([], [])
    assert st.segments == {"lapsed": k.now}
    k.advance(days=8)  # the flow goes on like any other
    assert [a.template for a in k.sent("lapsed-winback")] == ["we_miss_you", "we_miss_you_10pct"]


def test_a_dormant_customer_gets_its_segment_timer_and_flips_on_its_own() -> None:
    k = dormant(30)
    ordered = k.now - 30 * DAY
    proc = k.driver.processor
    proc.ruleset = ruleset(CARTED, LAPSED, WINBACK)
    k.sink(proc.backfill_segments("c1", k.now))
    st = k.state("c1")
    assert st.segments is None  # not lapsed yet
    flip = (ordered // DAY + 1) * DAY + 90 * DAY
    assert st.segments_due == flip
    assert k.driver.timers.pending() == [(flip, "c1", SEGMENT_TIMER)]
    k.advance(days=61)
    assert k.state("c1").segments == {"lapsed": flip}
    assert [a.fire_at for a in k.sent("lapsed-winback")] == [flip]


def test_a_removed_segment_stops_at_once_without_an_exit() -> None:
    k = RuleKit(ruleset(CARTED, LAPSED))
    for cid in ("c1", "c2"):
        k.send("cart_item_added", cid, {"product_id": "p1", "price": 5.0})
    assert k.state("c1").segments == {"carted-not-bought": k.now}
    proc = k.driver.processor
    proc.ruleset = rs = ruleset(LAPSED)  # carted-not-bought removed

    out = proc.backfill_segments("c1", k.now)
    st = k.state("c1")
    assert st.segments is None
    assert out.segment_changes == []  # not announced: the segment is gone
    assert st.segments_left is None
    assert st.segments_due is None  # nothing counted by lapsed changes on its own
    assert st.segments_digest == rs.segments_digest

    # before its backfill, a customer's next event drops it too
    out = k.send("page_viewed", "c2")
    assert k.state("c2").segments is None
    assert out.segment_changes == []

    # a rule set with no segments at all clears what is left (digest None)
    k.send("order_completed", "c3", {"order_id": "o1", "total": 5.0})
    k.advance(days=100)
    assert k.state("c3").segments is not None
    proc.ruleset = ruleset()
    assert proc.ruleset.segments_digest is None
    proc.backfill_segments("c3", k.now)
    st = k.state("c3")
    assert (st.segments, st.segments_due, st.segments_digest) == (None, None, None)


def test_new_customers_timers_and_merges_mark_the_digest() -> None:
    rs = ruleset(CARTED, LAPSED)
    k = RuleKit(rs)
    k.send("page_viewed", "c1")  # changes no segment: its baseline still holds for all
    assert k.state("c1").segments_digest == rs.segments_digest
    k.send("order_completed", "c2", {"order_id": "o1", "total": 5.0})
    k.state("c2").segments_digest = None
    k.advance(days=8)  # its segment timer evaluates them all
    assert k.state("c2").segments_digest == rs.segments_digest


def test_the_digest_follows_ids_and_conditions_only() -> None:
    base = ruleset(CARTED, LAPSED).segments_digest
    assert base is not None
    assert ruleset(LAPSED, CARTED).segments_digest == base  # order
    described = LAPSED.replace("not in the last 90 days", "dormant")
    assert ruleset(CARTED, described, WINBACK).segments_digest == base  # rules, descriptions
    changed = LAPSED.replace("'90d') == 0", "'30d') == 0")
    assert ruleset(CARTED, changed).segments_digest != base
    assert ruleset(CARTED).segments_digest != base
    assert ruleset().segments_digest is None


def test_a_state_of_the_previous_layout_still_loads() -> None:
    k = dormant(1)
    st = k.state("c1")
    row = msgspec.msgpack.decode(pack(st))
    at = CustomerState.__struct_fields__.index("segments_digest")
    assert row[at : at + 2] == [st.segments_digest, st.segments_flip]
    # before segments_flip was appended, and before segments_digest was
    for cut, digest in ((at + 1, st.segments_digest), (at, None)):
        packed = msgspec.msgpack.encode(row[:cut])
        json_row = msgspec.json.encode(st.to_row()[:cut])
        for got in (unpack(packed), load(packed), load(json_row)):
            assert got.segments_digest == digest
            assert got.segments_flip is None
            assert got.segments_due == st.segments_due
            assert got.counters == st.counters
    assert unpack(pack(st)) == st
    assert isinstance(unpack(packed), CustomerState)
