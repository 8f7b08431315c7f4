"""Identity in the pure core: an anonymous visitor's state joins the known customer's
(engine/identity.py), delivery feedback switches consent, addresses reach the actions."""

from __future__ import annotations

from engine.identity import hand_over, merge
from engine.testing import RuleKit
from state.customer import CustomerState
from state.memory import MemoryTimers

SETTINGS_REQUIRED = """
kind: settings
default_consent: {email: true, sms: true, push: false, webhook: true}
require_address: [email, sms]
"""


def _kit(*extra: str) -> RuleKit:
    kit = RuleKit.from_paths(["rules/recipes"])
    if extra:
        from pathlib import Path

        texts = [p.read_text() for p in sorted(Path("rules/recipes").glob("*.yaml"))]
        texts = [t for t in texts if "kind: settings" not in t]
        kit = RuleKit.from_yaml(*texts, *extra)
    return kit


def test_an_anonymous_cart_fires_for_the_known_customer_after_identify() -> None:
    kit = _kit()
    kit.send("product_viewed", "anon:a1", {"product_id": "p1"})
    kit.send("cart_item_added", "anon:a1", {"product_id": "p1", "price": 30.0})
    kit.advance(minutes=30)
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"})
    kit.send("customer_updated", "bob", {"attributes": {"email": "bob@example.com"}})
    kit.advance(hours=4)
    sent = kit.sent("abandoned-cart", "email")
    assert [(a.customer_id, a.to, a.params["cart_value"]) for a in sent] == [
        ("bob", "bob@example.com", 30.0)
    ]
    assert kit.sent(channel="email") == sent  # nothing for the anonymous id
    anon = kit.state("anon:a1")
    assert anon.merged_into == "bob"
    assert anon.cart is None
    assert anon.flows is None
    bob = kit.state("bob")
    assert bob.viewed == ["p1"]
    assert bob.merged_from == ["anon:a1"]


def test_later_events_under_the_anonymous_id_reach_the_known_customer() -> None:
    kit = _kit()
    kit.send("cart_item_added", "anon:a1", {"product_id": "p1", "price": 30.0})
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"})
    kit.send("cart_item_added", "anon:a1", {"product_id": "p2", "price": 5.0})
    kit.send("order_completed", "anon:a1", {"order_id": "o1", "total": 35.0})
    bob = kit.state("bob")
    assert (bob.orders, bob.revenue, bob.cart) == (1, 35.0, None)
    kit.advance(hours=9)
    assert kit.sent("abandoned-cart") == []  # the order exited the moved flow


def test_an_alias_processed_twice_merges_once() -> None:
    kit = _kit()
    kit.send("order_completed", "anon:a1", {"order_id": "o1", "total": 10.0})
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"}, event_id="al-1")
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"}, event_id="al-1")  # retry
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"}, event_id="al-2")
    assert kit.state("bob").orders == 1


def test_a_merge_delivered_twice_is_applied_once() -> None:
    timers = MemoryTimers()
    anon = CustomerState("anon:a1", 1, 1, orders=2, revenue=20.0, cart={"p1": [1.0, 3.0]})
    handed = hand_over(anon, timers)
    bob = CustomerState("bob", 5, 5, orders=1, revenue=5.0, cart={"p1": [2.0, 4.0]})
    assert merge(bob, handed, timers)
    assert not merge(bob, CustomerState.from_row(handed.to_row()), timers)
    assert (bob.orders, bob.revenue, bob.first_seen) == (3, 25.0, 1)
    assert bob.cart == {"p1": [2.0, 4.0]}  # larger quantity, the known cart's price


def test_an_anonymous_id_aliased_to_a_second_user_stays_with_the_first() -> None:
    kit = _kit()
    kit.send("order_completed", "anon:a1", {"order_id": "o1", "total": 10.0})
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"})
    kit.send("customer_aliased", "anon:a1", {"user_id": "alice"})
    kit.send("order_completed", "anon:a1", {"order_id": "o2", "total": 1.0})
    assert kit.state("bob").orders == 2
    assert kit.state("alice") is None


def test_the_known_customers_profile_wins_and_its_open_flow_stays() -> None:
    kit = _kit()
    kit.send("customer_updated", "anon:a1", {"attributes": {"email": "old@x", "src": "ads"}})
    kit.send("cart_item_added", "anon:a1", {"product_id": "p1", "price": 30.0})
    kit.advance(hours=1)
    kit.send("customer_updated", "bob", {"attributes": {"email": "bob@x"}})
    kit.send("cart_item_added", "bob", {"product_id": "p2", "price": 10.0})
    bob_started = kit.state("bob").flows["abandoned-cart"].started_at
    kit.send("customer_aliased", "anon:a1", {"user_id": "bob"})
    bob = kit.state("bob")
    assert bob.attributes == {"email": "bob@x", "src": "ads"}
    assert bob.flows["abandoned-cart"].started_at == bob_started
    assert sorted(bob.cart) == ["p1", "p2"]
    kit.advance(hours=4)
    assert [(a.customer_id, a.to) for a in kit.sent("abandoned-cart")] == [("bob", "bob@x")]


def test_unsubscribe_spam_report_and_stop_switch_consent_at_once() -> None:
    kit = _kit()
    for etype in ("email_unsubscribed", "email_spam_reported"):
        cid = f"c-{etype}"
        kit.send(etype, cid, {"rule_id": "abandoned-cart"})
        assert kit.state(cid).consent == {"email": False}
    kit.send("sms_resubscribed", "c2")
    assert kit.state("c2").consent == {"sms": True}
    kit.send("sms_unsubscribed", "c2")
    assert kit.state("c2").consent == {"sms": False}


def test_a_send_without_a_required_address_is_suppressed_not_sent() -> None:
    kit = _kit(SETTINGS_REQUIRED)
    kit.send("cart_item_added", "bob", {"product_id": "p1", "price": 30.0})
    kit.advance(hours=4)
    assert kit.sent("abandoned-cart") == []
    assert [f.outcome for f in kit.fired("abandoned-cart")] == ["suppressed_no_address"]


def test_a_hard_bounce_marks_the_address_undeliverable_until_it_changes() -> None:
    kit = _kit(SETTINGS_REQUIRED)
    kit.send("customer_updated", "bob", {"attributes": {"email": "bob@x"}})
    kit.send("email_bounced", "bob", {"bounce_type": "soft"})
    assert kit.state("bob").undeliverable is None
    kit.send("email_bounced", "bob", {"bounce_type": "hard"})
    assert kit.state("bob").undeliverable == {"email": "bob@x"}
    kit.send("cart_item_added", "bob", {"product_id": "p1", "price": 30.0})
    kit.advance(hours=4)
    assert [f.outcome for f in kit.fired("abandoned-cart")] == ["suppressed_no_address"]
    kit.send("customer_updated", "bob", {"attributes": {"email": "bob@new"}})
    kit.send("cart_item_added", "bob", {"product_id": "p2", "price": 30.0})
    kit.advance(hours=4)
    assert [a.to for a in kit.sent("abandoned-cart")] == ["bob@new"]


def test_a_whole_cart_replaces_the_cart() -> None:
    kit = _kit()
    kit.send("cart_item_added", "bob", {"product_id": "p1", "price": 30.0})
    items = [{"product_id": "p2", "price": 5.0, "quantity": 2}, {"product_id": "p3"}]
    kit.send("cart_replaced", "bob", {"items": items})
    assert kit.state("bob").cart == {"p2": [2.0, 5.0], "p3": [1.0, 0.0]}
    kit.send("cart_replaced", "bob", {"items": []})
    assert kit.state("bob").cart is None
