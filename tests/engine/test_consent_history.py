"""Consent history (issue 24): every consent change, with its source and event time, kept
per customer (the last CONSENT_HISTORY_MAX), through checkpoints, older rows and identity
merges, and shown by the customer view the export carries. Scenarios under the virtual
clock."""

from __future__ import annotations

import msgspec

from engine.customer_view import customer_json
from engine.testing import START, RuleKit
from engine.types import iso
from state.customer import CONSENT_HISTORY_MAX, CustomerState, load, pack, unpack

MIN = 60_000

FLOW = """\
id: cart
trigger: {event: cart_item_added}
steps:
  - wait: 1h
  - send: {channel: email, template: reminder}
"""
SETTINGS = """\
kind: settings
default_consent: {email: true, sms: false, push: false, webhook: true}
"""


def _history(kit: RuleKit, cid: str) -> list[dict[str, object]]:
    view = customer_json(kit.state(cid), kit.driver.processor.ruleset, kit.now)
    history: list[dict[str, object]] = view["profile"]["consent_history"]
    return history


def test_every_change_with_its_source_and_time_in_arrival_order() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    # sign-up (a Segment identify maps to the same statement), then a provider
    # unsubscribe, the storefront's preference centre, an SMS keyword, a profile update
    kit.send("customer_signed_up", "c1", {"consent": {"email": True, "sms": True}})
    kit.driver.advance(10 * MIN)
    kit.send("email_unsubscribed", "c1", context={"source": "sendgrid"})
    kit.driver.advance(10 * MIN)
    kit.send("email_resubscribed", "c1", context={"source": "preference_center"})
    kit.driver.advance(10 * MIN)
    kit.send("sms_unsubscribed", "c1", context={"source": "twilio"})
    # a late statement (stamped before the first) still comes last: arrival order
    kit.send("customer_updated", "c1", {"consent": {"push": True}}, at=START - MIN)
    assert _history(kit, "c1") == [
        {
            "at": iso(START),
            "consent": {"email": True, "sms": True},
            "event": "customer_signed_up",
            "source": "storefront",
        },
        {
            "at": iso(START + 10 * MIN),
            "consent": {"email": False},
            "event": "email_unsubscribed",
            "source": "sendgrid",
        },
        {
            "at": iso(START + 20 * MIN),
            "consent": {"email": True},
            "event": "email_resubscribed",
            "source": "preference_center",
        },
        {
            "at": iso(START + 30 * MIN),
            "consent": {"sms": False},
            "event": "sms_unsubscribed",
            "source": "twilio",
        },
        {
            "at": iso(START - MIN),
            "consent": {"push": True},
            "event": "customer_updated",
            "source": "storefront",
        },
    ]
    # the history does not change what rules see, nor the last-change record
    st = kit.state("c1")
    assert st.consent == {"email": True, "sms": False, "push": True}
    assert set(st.consent_changes) == {"email", "sms"}


def test_a_statement_repeating_the_consent_in_force_is_not_a_change() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    assert kit.state("c2") is None
    kit.send("page_viewed", "c2", {})
    assert kit.state("c2").consent_history is None  # never stated: nothing kept
    for _ in range(3):  # identify calls carry the traits every time
        kit.send("customer_updated", "c2", {"consent": {"email": True}})
    kit.send("email_unsubscribed", "c2")
    kit.send("email_unsubscribed", "c2", context={"source": "sendgrid"})  # already off
    kit.send("customer_updated", "c2", {"consent": {"email": False, "sms": True}})
    assert [(h["event"], h["consent"]) for h in _history(kit, "c2")] == [
        ("customer_updated", {"email": True}),
        ("email_unsubscribed", {"email": False}),
        ("customer_updated", {"sms": True}),  # email: already off
    ]


def test_bounded_to_the_last_changes() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    n = CONSENT_HISTORY_MAX + 7
    for i in range(n):
        kind = "email_unsubscribed" if i % 2 == 0 else "email_resubscribed"
        kit.send(kind, "c3", context={"source": f"s{i}"})
        kit.driver.advance(MIN)
    history = _history(kit, "c3")
    assert len(history) == CONSENT_HISTORY_MAX
    assert [h["source"] for h in history] == [f"s{i}" for i in range(7, n)]
    assert history[-1]["at"] == iso(START + (n - 1) * MIN)


def test_survives_a_checkpoint_and_rows_of_the_earlier_layout_still_load() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    kit.send("customer_signed_up", "c4", {"consent": {"email": True}})
    kit.send("email_spam_reported", "c4", context={"source": "sendgrid"})
    st = kit.state("c4")
    assert unpack(pack(st)).consent_history == st.consent_history
    assert load(msgspec.json.encode(st.to_row())).consent_history == st.consent_history
    # a row written before the field existed (one element shorter) loads without it
    old_row = st.to_row()[:-1]
    assert CustomerState.from_row(old_row).consent_history is None
    older = msgspec.msgpack.encode(msgspec.msgpack.decode(pack(st))[:-1])
    assert unpack(older).consent == {"email": False}
    assert unpack(older).consent_history is None


def test_an_identity_merge_keeps_both_histories_by_event_time() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    kit.send("customer_signed_up", "c5", {"consent": {"email": True}})
    kit.driver.advance(5 * MIN)
    kit.send("sms_resubscribed", "anon:v5", context={"source": "sms_keyword"})
    kit.driver.advance(5 * MIN)
    kit.send("email_unsubscribed", "c5", context={"source": "sendgrid"})
    kit.send("customer_aliased", "anon:v5", {"user_id": "c5"})
    kit.driver.advance(0)
    assert [(h["event"], h["source"]) for h in _history(kit, "c5")] == [
        ("customer_signed_up", "storefront"),
        ("sms_resubscribed", "sms_keyword"),  # the anonymous visitor's, at its time
        ("email_unsubscribed", "sendgrid"),
    ]
    assert kit.state("anon:v5").consent_history is None  # the redirect keeps nothing
    # merged twice (a re-sent merge) is applied once
    assert len(kit.state("c5").consent_history) == 3


def test_a_merge_keeps_the_last_changes_of_both() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    for i in range(CONSENT_HISTORY_MAX):
        for cid in ("c6", "anon:v6"):
            kind = "email_unsubscribed" if i % 2 == 0 else "email_resubscribed"
            kit.send(kind, cid, context={"source": f"{cid}-{i}"})
        kit.driver.advance(MIN)
    kit.send("customer_aliased", "anon:v6", {"user_id": "c6"})
    kit.driver.advance(0)
    history = kit.state("c6").consent_history
    assert len(history) == CONSENT_HISTORY_MAX
    # the latest ten minutes of both, interleaved by time
    assert history[0][0] == START + MIN * (CONSENT_HISTORY_MAX // 2)
    last = CONSENT_HISTORY_MAX - 1
    assert {h[3] for h in history[-2:]} == {f"c6-{last}", f"anon:v6-{last}"}
