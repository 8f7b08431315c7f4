"""An opt-out is an event (issue 22, item 8): ``email_unsubscribed`` / ``sms_unsubscribed``
sent by the storefront itself (a preference centre, an account page) switch that channel's
consent off like a provider callback does, recorded with its time and source; consent
follows arrival order (a late revoke wins). Scenarios under the virtual clock."""

from __future__ import annotations

from engine.customer_view import customer_json
from engine.testing import START, RuleKit
from engine.types import iso
from state.customer import pack, unpack

HOUR = 3_600_000

# a cart flow: email after 1h, SMS after 2h (no quiet hours: the clock starts at noon UTC)
FLOW = """\
id: cart
trigger: {event: cart_item_added}
steps:
  - wait: 1h
  - send: {channel: email, template: reminder}
  - wait: 1h
  - send: {channel: sms, template: sms_10pct}
"""
SETTINGS = """\
kind: settings
default_consent: {email: true, sms: false, push: false, webhook: true}
"""


def _kit() -> RuleKit:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    kit.send("customer_signed_up", "c1", {"consent": {"email": True, "sms": True}})
    return kit


def _outcomes(kit: RuleKit) -> list[tuple[str, str]]:
    return [(f.channel, f.outcome) for f in kit.fired("cart")]


def test_storefront_email_unsubscribe_stops_the_email_not_the_sms() -> None:
    kit = _kit()
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    kit.advance(minutes=30)
    # the storefront's preference centre: no rule_id, no message_key
    kit.send("email_unsubscribed", "c1", context={"source": "preference_center"})
    kit.advance(hours=2)
    assert _outcomes(kit) == [("email", "suppressed_consent"), ("sms", "sent")]
    assert [a.channel for a in kit.sent("cart")] == ["sms"]
    st = kit.state("c1")
    assert st.consent == {"email": False, "sms": True}
    at = START + 30 * 60_000
    assert st.consent_changes["email"] == (at, "email_unsubscribed", "preference_center")
    assert "sms" not in st.consent_changes  # stated at sign-up: no opt-out record


def test_storefront_sms_unsubscribe_stops_the_sms_only() -> None:
    kit = _kit()
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    kit.advance(minutes=90)
    kit.send("sms_unsubscribed", "c1", {})  # no source named: the storefront
    kit.advance(hours=1)
    assert _outcomes(kit) == [("email", "sent"), ("sms", "suppressed_consent")]
    assert kit.state("c1").consent_changes["sms"] == (
        kit.now - HOUR,
        "sms_unsubscribed",
        "storefront",
    )


def test_a_resubscribe_switches_it_back_on_and_other_channels_are_untouched() -> None:
    kit = _kit()
    kit.send("email_unsubscribed", "c1")
    kit.send("email_resubscribed", "c1", context={"source": "account_page"})
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    kit.advance(hours=2)
    assert _outcomes(kit) == [("email", "sent"), ("sms", "sent")]
    assert kit.state("c1").consent_changes["email"][1:] == ("email_resubscribed", "account_page")


def test_a_provider_callback_and_a_storefront_event_are_the_same_event() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    kit.send("email_unsubscribed", "a", {"rule_id": "cart"}, context={"source": "sendgrid"})
    kit.send("email_unsubscribed", "b", {"template": "newsletter"})
    assert kit.state("a").consent == kit.state("b").consent == {"email": False}
    assert kit.state("a").consent_changes["email"][2] == "sendgrid"
    assert kit.state("b").consent_changes["email"][2] == "storefront"


def test_a_late_revoke_wins_consent_follows_arrival_order() -> None:
    kit = _kit()
    kit.advance(hours=1)
    opt_in, opt_out = kit.now - 10 * 60_000, kit.now - 50 * 60_000
    kit.send("customer_updated", "c1", {"consent": {"email": True}}, at=opt_in)
    # stamped before the opt-in above, arriving after it (an offline device): still wins
    kit.send("email_unsubscribed", "c1", at=opt_out)
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    kit.advance(hours=2)
    assert _outcomes(kit)[0] == ("email", "suppressed_consent")
    assert kit.state("c1").consent_changes["email"] == (opt_out, "email_unsubscribed", "storefront")
    # and the other way round: an opt-in arriving after the opt-out wins too
    kit.send("customer_updated", "c1", {"consent": {"email": True}}, at=START)
    assert kit.state("c1").consent["email"] is True
    assert kit.state("c1").consent_changes is None  # the opt-out it superseded is gone


def test_no_consent_event_no_record_and_default_consent_applies() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    kit.send("cart_item_added", "c9", {"product_id": "p1", "price": 30.0})
    kit.advance(hours=2)
    # settings default: email on, sms off
    assert _outcomes(kit) == [("email", "sent"), ("sms", "suppressed_consent")]
    assert kit.state("c9").consent_changes is None


def test_the_record_survives_a_checkpoint_a_merge_and_shows_in_the_api() -> None:
    kit = _kit()
    kit.send("email_unsubscribed", "c1", context={"source": "preference_center"})
    st = kit.state("c1")
    assert unpack(pack(st)).consent_changes == st.consent_changes
    # an anonymous visitor who opted out of SMS, then logs in as c1
    kit.send("sms_unsubscribed", "anon:v1", context={"source": "sms_footer"})
    kit.send("customer_aliased", "anon:v1", {"user_id": "c1"})
    kit.driver.advance(0)
    merged = kit.state("c1")
    # the known customer's consent wins (sms was given at sign-up), and the anonymous
    # visitor's SMS opt-out record does not come along with a consent it does not explain
    assert merged.consent == {"email": False, "sms": True}
    assert set(merged.consent_changes) == {"email"}
    assert kit.state("anon:v1").consent_changes is None
    view = customer_json(merged, kit.driver.processor.ruleset, kit.now)
    assert view["profile"]["consent_changes"]["email"] == {
        "at": iso(START),
        "event": "email_unsubscribed",
        "source": "preference_center",
    }


def test_an_anonymous_opt_out_fills_a_gap_with_its_record() -> None:
    kit = RuleKit.from_yaml(FLOW, SETTINGS)
    kit.send("page_viewed", "c5", {})  # known, no consent stated: the settings' default
    kit.send("sms_resubscribed", "anon:v2", context={"source": "sms_keyword"})
    kit.send("customer_aliased", "anon:v2", {"user_id": "c5"})
    kit.driver.advance(0)
    merged = kit.state("c5")
    assert merged.consent == {"sms": True}
    assert merged.consent_changes["sms"][1:] == ("sms_resubscribed", "sms_keyword")


def test_a_profile_statement_leaves_other_channels_records() -> None:
    kit = _kit()
    kit.send("email_unsubscribed", "c1")
    kit.send("sms_unsubscribed", "c1")
    kit.send("customer_updated", "c1", {"consent": {"sms": True}})
    st = kit.state("c1")
    assert st.consent == {"email": False, "sms": True}
    assert set(st.consent_changes) == {"email"}
