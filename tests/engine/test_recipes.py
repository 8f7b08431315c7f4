"""Scenario tests for every stock recipe under the virtual clock, negative paths included."""

from __future__ import annotations

import pytest

from engine.testing import START, RuleKit

H = 3_600_000
D = 24 * H

SMS_OK = {"consent": {"sms": True, "email": True}}


def cart_add(kit: RuleKit, cid: str, price: float = 30.0, pid: str = "p1") -> None:
    kit.send("cart_item_added", cid, {"product_id": pid, "price": price, "quantity": 1})


def find_arm(kit: RuleKit, rule_id: str, arm: str, prefix: str = "c") -> str:
    """A customer id assigned to ``arm`` of ``rule_id`` (assignment is deterministic)."""
    from engine.processor import assign_variant

    rule = kit.driver.processor.ruleset.rules[rule_id]
    for i in range(10_000):
        cid = f"{prefix}{i}"
        if assign_variant(cid, rule) == arm:
            return cid
    raise AssertionError("no customer in arm")


@pytest.fixture
def kit() -> RuleKit:
    return RuleKit.from_paths()


class TestAbandonedCart:
    def test_email_at_4h_then_sms_when_not_opened(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.send("customer_updated", cid, SMS_OK)
        cart_add(kit, cid, 42.5)
        kit.advance(hours=3, minutes=59)
        assert kit.sent("abandoned-cart") == []
        kit.advance(minutes=1)
        [email] = kit.sent("abandoned-cart")
        assert (email.channel, email.template, email.fire_at) == (
            "email",
            "cart_reminder",
            START + 4 * H,
        )
        assert email.params == {"cart_value": 42.5, "items": 1}
        kit.advance(hours=4)
        sms = kit.sent("abandoned-cart", channel="sms")
        assert [(a.template, a.params, a.fire_at) for a in sms] == [
            ("cart_10pct", {"discount_pct": 10}, START + 8 * H)
        ]

    def test_order_exits_the_flow(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        cart_add(kit, cid)
        kit.advance(hours=2)
        kit.send("order_completed", cid, {"order_id": "o1", "total": 30.0})
        kit.advance(days=1)
        assert kit.sent("abandoned-cart") == []
        assert kit.state(cid).flows is None or "abandoned-cart" not in kit.state(cid).flows

    def test_email_open_cancels_the_sms(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.send("customer_updated", cid, SMS_OK)
        cart_add(kit, cid)
        kit.advance(hours=5)
        kit.send("email_opened", cid, {"template": "cart_reminder"})
        kit.advance(hours=5)
        assert [a.channel for a in kit.sent("abandoned-cart")] == ["email"]

    def test_open_before_the_email_does_not_count(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.send("customer_updated", cid, SMS_OK)
        cart_add(kit, cid)
        kit.advance(hours=1)
        kit.send("email_opened", cid, {"template": "newsletter"})
        kit.advance(hours=8)
        assert [a.channel for a in kit.sent("abandoned-cart")] == ["email", "sms"]

    def test_sms_consent_off_blocks_and_is_counted(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        cart_add(kit, cid)  # no consent event: stock default for sms is off
        kit.advance(hours=9)
        assert [a.channel for a in kit.sent("abandoned-cart")] == ["email"]
        assert len(kit.fired("abandoned-cart", "suppressed_consent")) == 1

    def test_email_consent_revoked_blocks_email(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.send("customer_updated", cid, {"consent": {"email": False}})
        cart_add(kit, cid)
        kit.advance(hours=5)
        assert kit.sent("abandoned-cart") == []

    def test_cart_change_restarts_the_clock(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        cart_add(kit, cid)
        kit.advance(hours=3)
        cart_add(kit, cid, pid="p2")
        kit.advance(hours=3)
        assert kit.sent("abandoned-cart") == []
        kit.advance(hours=1)
        [email] = kit.sent("abandoned-cart")
        assert email.fire_at == START + 7 * H
        assert email.params["items"] == 2

    def test_emptying_the_cart_exits(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        cart_add(kit, cid)
        kit.send("cart_item_removed", cid, {"product_id": "p1"})
        kit.advance(hours=10)
        assert kit.sent("abandoned-cart") == []

    def test_quiet_hours_defer_not_drop(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.send("customer_updated", cid, {"timezone": "America/New_York"})
        # START is 12:00 UTC = 07:00 New York; +4h = 11:00 local, not quiet. Start at
        # 19:00 local instead so the 4h mark (23:00 local) is inside 21:00-09:00.
        kit.advance(hours=12)  # 00:00 UTC = 19:00 New York
        cart_add(kit, cid)
        kit.advance(hours=4)
        assert kit.sent("abandoned-cart") == []
        kit.advance(hours=10)  # 09:00 New York = 14:00 UTC next day
        [email] = kit.sent("abandoned-cart")
        assert email.fire_at == START + D + 2 * H  # 2026-01-06T14:00Z

    def test_per_customer_cap_suppresses(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        for _ in range(3):  # cap is 2/7d; one cart a day at noon, email at 16:00
            cart_add(kit, cid)
            kit.advance(days=1)
        assert len(kit.sent("abandoned-cart")) == 2
        assert len(kit.fired("abandoned-cart", "suppressed_rule_cap")) == 1

    def test_holdout_gets_no_send_but_is_counted(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "holdout")
        kit.send("customer_updated", cid, SMS_OK)
        cart_add(kit, cid)
        kit.advance(hours=9)
        assert kit.sent("abandoned-cart") == []
        assert [f.channel for f in kit.fired("abandoned-cart", "holdout")] == ["email", "sms"]
        kit.send("order_completed", cid, {"order_id": "o1", "total": 30.0})
        assert [(c.rule_id, c.variant) for c in kit.sink.conversions] == [
            ("abandoned-cart", "holdout")
        ]

    def test_variant_b_uses_its_template_and_converts(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "b")
        cart_add(kit, cid)
        kit.advance(hours=4)
        [email] = kit.sent("abandoned-cart")
        assert (email.variant, email.template) == ("b", "cart_reminder_urgent")
        kit.advance(days=4)  # goal window is 3d from the cart add
        kit.send("order_completed", cid, {"order_id": "o1", "total": 30.0})
        assert kit.sink.conversions == []

    def test_restarts_extend_one_goal_window(self, kit: RuleKit) -> None:
        """Each cart add restarts the flow; the order converts the rule once, inside a
        window that runs 3d from the last restart."""
        cid = find_arm(kit, "abandoned-cart", "a")
        for i in range(5):
            cart_add(kit, cid, pid=f"p{i}")
            kit.advance(days=2)
        assert len(kit.state(cid).goals) == 1
        kit.send("order_completed", cid, {"order_id": "o1", "total": 30.0})
        assert [(c.rule_id, c.variant) for c in kit.sink.conversions] == [("abandoned-cart", "a")]

    def test_expired_goal_windows_are_dropped(self, kit: RuleKit) -> None:
        """A customer who never orders holds one window, not one per entry."""
        cid = find_arm(kit, "abandoned-cart", "a")
        for i in range(6):
            cart_add(kit, cid, pid=f"p{i}")
            kit.advance(days=5)  # past the 3d window and the 24h allowed lateness
        [(rule_id, variant, _, start, end)] = kit.state(cid).goals
        assert (rule_id, variant, end - start) == ("abandoned-cart", "a", 3 * D)

    def test_duplicate_event_id_ignored(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.send("cart_item_added", cid, {"product_id": "p1", "price": 10.0}, event_id="e1")
        kit.advance(hours=3)
        out = kit.send(
            "cart_item_added", cid, {"product_id": "p1", "price": 10.0}, event_id="e1", at=START
        )
        assert out.duplicate
        assert kit.state(cid).cart_items == 1
        kit.advance(hours=1)  # not restarted by the duplicate: fires at 4h
        assert [a.fire_at for a in kit.sent("abandoned-cart")] == [START + 4 * H]

    def test_late_event_waits_from_its_own_time(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.advance(hours=3)
        out = kit.send("cart_item_added", cid, {"product_id": "p1", "price": 10.0}, at=START)
        assert out.lateness == 3 * H
        assert not out.too_late
        kit.advance(hours=1)
        assert [a.fire_at for a in kit.sent("abandoned-cart")] == [START + 4 * H]

    def test_too_late_event_updates_state_but_does_not_trigger(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.advance(days=2)
        out = kit.send("cart_item_added", cid, {"product_id": "p1", "price": 10.0}, at=START)
        assert out.too_late
        assert kit.state(cid).cart_items == 1
        kit.advance(days=1)
        assert kit.sent("abandoned-cart") == []

    def test_event_from_a_wrong_clock_is_processed_at_the_clock(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        year = 365 * 24 * H
        out = kit.send("cart_item_added", cid, {"product_id": "p1", "price": 9.0}, at=START + year)
        assert out.future
        assert kit.state(cid).last_seen == START  # not a year ahead
        kit.advance(hours=4)  # the wait counts from the clock, not from next year
        assert [a.fire_at for a in kit.sent("abandoned-cart")] == [START + 4 * H]
        # within the tolerance (default 5 minutes) the event's own time stands
        out = kit.send("page_viewed", cid, {}, at=kit.now + 4 * 60_000)
        assert not out.future
        assert kit.state(cid).last_seen == kit.now + 4 * 60_000

    def test_order_before_flow_start_does_not_exit(self, kit: RuleKit) -> None:
        cid = find_arm(kit, "abandoned-cart", "a")
        kit.advance(hours=1)
        cart_add(kit, cid)
        kit.send("order_completed", cid, {"order_id": "o0", "total": 5.0}, at=START)
        assert "abandoned-cart" in kit.state(cid).flows  # not ended by the late order...
        kit.advance(hours=4)
        # ...but it cleared the cart (arrival order), and send_if re-checks the cart before
        # the reminder: skipped, and the flow ends there
        assert kit.sent("abandoned-cart") == []
        assert [f.outcome for f in kit.fired("abandoned-cart")] == ["skipped_condition"]
        assert "abandoned-cart" not in kit.state(cid).flows


class TestBrowseAbandonment:
    def test_email_with_viewed_products(self, kit: RuleKit) -> None:
        kit.send("product_viewed", "c1", {"product_id": "p1"})
        kit.advance(minutes=10)
        kit.send("product_viewed", "c1", {"product_id": "p2"})
        kit.advance(hours=2)
        [a] = kit.sent("browse-abandonment")
        assert a.params == {"product_id": "p2", "recently_viewed": ["p1", "p2"]}
        assert a.fire_at == START + 2 * H + 10 * 60_000

    def test_cart_add_exits(self, kit: RuleKit) -> None:
        kit.send("product_viewed", "c1", {"product_id": "p1"})
        kit.advance(minutes=30)
        cart_add(kit, "c1")
        kit.advance(hours=3)
        assert kit.sent("browse-abandonment") == []

    def test_once_per_week(self, kit: RuleKit) -> None:
        kit.send("product_viewed", "c1", {"product_id": "p1"})
        kit.advance(days=1)
        kit.send("product_viewed", "c1", {"product_id": "p2"})
        kit.advance(days=1)
        assert len(kit.sent("browse-abandonment")) == 1
        kit.advance(days=6)
        kit.send("product_viewed", "c1", {"product_id": "p3"})
        kit.advance(hours=2)
        assert len(kit.sent("browse-abandonment")) == 2


class TestWelcomeSeries:
    def test_three_emails_offer_at_10_local(self, kit: RuleKit) -> None:
        kit.send("customer_signed_up", "c1", {"timezone": "Europe/Paris"})
        assert [a.template for a in kit.sent("welcome-series")] == ["welcome_1"]
        kit.advance(days=2)
        assert [a.template for a in kit.sent("welcome-series")][-1] == "welcome_2"
        kit.advance(days=6)
        offer = kit.sent("welcome-series")[-1]
        assert offer.template == "welcome_3_offer"
        # 7 days after 12:00Z is 2026-01-12T12:00Z = 13:00 Paris; next 10:00 Paris is
        # 2026-01-13T09:00Z
        assert offer.fire_at == START + 8 * D - 3 * H

    def test_order_skips_the_offer(self, kit: RuleKit) -> None:
        kit.send("customer_signed_up", "c1")
        kit.advance(days=3)
        kit.send("order_completed", "c1", {"order_id": "o1", "total": 20.0})
        kit.advance(days=10)
        assert [a.template for a in kit.sent("welcome-series")] == ["welcome_1", "welcome_2"]

    def test_once_only(self, kit: RuleKit) -> None:
        kit.send("customer_signed_up", "c1")
        kit.advance(days=10)
        kit.send("customer_signed_up", "c1")
        assert [a.template for a in kit.sent("welcome-series")].count("welcome_1") == 1


class TestReviewRequest:
    def test_three_days_after_delivery(self, kit: RuleKit) -> None:
        kit.send("order_delivered", "c1", {"order_id": "o9"})
        kit.advance(days=3)
        [a] = kit.sent("review-request")
        assert (a.params, a.fire_at) == ({"order_id": "o9"}, START + 3 * D)

    def test_refund_cancels(self, kit: RuleKit) -> None:
        kit.send("order_delivered", "c1", {"order_id": "o9"})
        kit.advance(days=1)
        kit.send("order_refunded", "c1", {"order_id": "o9"})
        kit.advance(days=3)
        assert kit.sent("review-request") == []


class TestWinBack:
    def test_fires_on_its_timer_with_no_further_event(self, kit: RuleKit) -> None:
        kit.send("order_completed", "c1", {"order_id": "o1", "total": 20.0})
        kit.advance(days=59)
        assert kit.sent("win-back") == []
        kit.advance(days=1)
        [a] = kit.sent("win-back")
        assert a.fire_at == START + 60 * D

    def test_new_order_restarts(self, kit: RuleKit) -> None:
        kit.send("order_completed", "c1", {"order_id": "o1", "total": 20.0})
        kit.advance(days=30)
        kit.send("order_completed", "c1", {"order_id": "o2", "total": 20.0})
        kit.advance(days=59)
        assert kit.sent("win-back") == []
        kit.advance(days=1)
        assert len(kit.sent("win-back")) == 1


class TestLoyaltyAndVip:
    def test_fifth_order_only(self, kit: RuleKit) -> None:
        for i in range(7):
            kit.send("order_completed", "c1", {"order_id": f"o{i}", "total": 10.0})
            kit.advance(hours=1)
        [a] = kit.sent("loyalty-5th-order")
        assert a.fire_at == START + 4 * H

    def test_vip_once_at_500_ltv(self, kit: RuleKit) -> None:
        for i, total in enumerate([200.0, 250.0, 100.0, 300.0]):
            kit.send("order_completed", "c1", {"order_id": f"o{i}", "total": total})
        [a] = kit.sent("vip-segment")
        assert (a.channel, a.params) == ("webhook", {"ltv": 550.0, "orders": 3})

    def test_refund_lowers_ltv(self, kit: RuleKit) -> None:
        kit.send("order_completed", "c1", {"order_id": "o1", "total": 450.0})
        kit.send("order_refunded", "c1", {"order_id": "o1", "amount": 450.0})
        kit.send("order_completed", "c1", {"order_id": "o2", "total": 60.0})
        assert kit.sent("vip-segment") == []


class TestBackInStock:
    """The storefront sends one product_back_in_stock per subscriber on restock."""

    def restock(self, kit: RuleKit, cid: str, pid: str = "p1", event_id: str | None = None) -> None:
        kit.send("product_back_in_stock", cid, {"product_id": pid}, event_id=event_id)

    def test_email_at_once_with_the_product(self, kit: RuleKit) -> None:
        kit.send("back_in_stock_requested", "c1", {"product_id": "p1"})
        kit.advance(days=3)
        assert kit.sent("back-in-stock") == []  # asking sends nothing
        self.restock(kit, "c1")
        [a] = kit.sent("back-in-stock")
        assert (a.channel, a.template, a.params, a.fire_at) == (
            "email",
            "back_in_stock",
            {"product_id": "p1"},
            START + 3 * D,
        )
        assert kit.state("c1").flows is None  # nothing left open

    def test_nothing_when_the_product_is_in_the_cart(self, kit: RuleKit) -> None:
        cart_add(kit, "c1", pid="p1")
        self.restock(kit, "c1", "p1")
        assert kit.sent("back-in-stock") == []
        assert kit.fired("back-in-stock") == []  # not entered: the when is false
        self.restock(kit, "c1", "p2")  # another product: sent
        assert [a.params for a in kit.sent("back-in-stock")] == [{"product_id": "p2"}]

    def test_email_consent_off_is_suppressed(self, kit: RuleKit) -> None:
        kit.send("customer_updated", "c1", {"consent": {"email": False}})
        self.restock(kit, "c1")
        assert kit.sent("back-in-stock") == []
        assert len(kit.fired("back-in-stock", "suppressed_consent")) == 1

    def test_quiet_hours_defer_to_nine_local(self, kit: RuleKit) -> None:
        kit.send("customer_updated", "c1", {"timezone": "America/New_York"})
        self.restock(kit, "c1")  # 12:00 UTC = 07:00 New York: quiet
        assert kit.sent("back-in-stock") == []
        kit.advance(hours=2)  # 09:00 New York
        [a] = kit.sent("back-in-stock")
        assert (a.params, a.fire_at) == ({"product_id": "p1"}, START + 2 * H)

    def test_at_most_once_a_week(self, kit: RuleKit) -> None:
        self.restock(kit, "c1", "p1")
        kit.advance(days=1)
        self.restock(kit, "c1", "p1")  # the product flapped: restocked again next day
        kit.advance(days=2)
        self.restock(kit, "c1", "p2")
        assert [a.params["product_id"] for a in kit.sent("back-in-stock")] == ["p1"]
        kit.advance(days=4)  # 7 days after the first
        self.restock(kit, "c1", "p2")
        assert [a.params["product_id"] for a in kit.sent("back-in-stock")] == ["p1", "p2"]
        self.restock(kit, "c2", "p1")  # another customer is not held back
        assert len(kit.sent("back-in-stock")) == 3

    def test_duplicate_event_id_ignored(self, kit: RuleKit) -> None:
        self.restock(kit, "c1", event_id="bis-sub-1")
        kit.advance(minutes=30)
        out = kit.send("product_back_in_stock", "c1", {"product_id": "p1"}, event_id="bis-sub-1")
        assert out.duplicate
        assert len(kit.sent("back-in-stock")) == 1

    def test_too_late_restock_sends_nothing(self, kit: RuleKit) -> None:
        kit.advance(days=2)
        out = kit.send("product_back_in_stock", "c1", {"product_id": "p1"}, at=START)
        assert out.too_late
        assert kit.sent("back-in-stock") == []

    def test_no_product_id_no_email(self, kit: RuleKit) -> None:
        # custom event types: ingest does not require product_id, the trigger filter does
        kit.send("product_back_in_stock", "c1", {"sku": "p1"})
        assert kit.sent("back-in-stock") == []
        assert kit.sink.errors == []
        self.restock(kit, "c1")  # and it did not count as an entry
        assert len(kit.sent("back-in-stock")) == 1


def test_channel_cap_across_rules(kit: RuleKit) -> None:
    # email cap is 3/1d: welcome_1, loyalty, browse... a fourth email the same day is held
    kit.send("customer_signed_up", "c1")  # email 1
    for i in range(5):
        kit.send("order_completed", "c1", {"order_id": f"o{i}", "total": 1.0})  # 5th: email 2
    kit.send("product_viewed", "c1", {"product_id": "p1"})
    kit.advance(hours=2)  # browse email 3
    kit.send("order_delivered", "c1", {"order_id": "o4"})
    kit.send("product_viewed", "c1", {"product_id": "p2"})
    emails = kit.sent(channel="email")
    assert len(emails) == 3
    kit.send("customer_signed_up", "c2")
    assert len(kit.sent(channel="email")) == 4  # another customer is not capped


def test_idempotency_keys_stable_across_replays() -> None:
    def run() -> list[str]:
        kit = RuleKit.from_paths()
        kit.send("cart_item_added", "c1", {"product_id": "p", "price": 5.0}, event_id="x1")
        kit.send("order_completed", "c2", {"order_id": "o", "total": 600.0}, event_id="x2")
        kit.advance(days=61)
        return [a.idempotency_key for a in kit.sent()]

    first = run()
    assert first == run()
    assert len(first) == len(set(first)) >= 3
