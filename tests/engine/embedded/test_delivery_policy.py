"""What delivery asks the rule set (engine/send_policy.py): a send step's deliver_within,
and a rule's quiet hours for a send delayed by an outage, in the customer's time zone."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.send_policy import quiet_hold, rule_within
from engine.types import Action, to_ms
from rules.ruleset import load_texts

RULES = [
    (
        "cart.yaml",
        "id: cart\ntrigger: {event: cart_item_added}\n"
        "limits: {quiet_hours: '21:00-09:00'}\n"
        "steps:\n"
        "  - send: {channel: email, template: first}\n"
        "  - send: {channel: sms, template: nudge, deliver_within: 2h}\n"
        "  - send: {channel: sms, template: last}\n",
    ),
    (
        "hook.yaml",
        "id: hook\ntrigger: {event: order_completed}\n"
        "limits: {quiet_hours: '21:00-09:00'}\n"
        "steps:\n  - send: {channel: webhook, template: t}\n",
    ),
]
RS = load_texts(RULES)


def act(rule: str, channel: str, template: str, customer: str = "c1") -> Action:
    return Action(rule, 1, customer, channel, template, {}, "a", "k", 0)


def test_rule_within_matches_the_step() -> None:
    within = rule_within(lambda: RS)
    assert within(act("cart", "sms", "nudge")) == 7200.0
    assert within(act("cart", "sms", "last")) is None  # that step sets none
    assert within(act("cart", "sms", "from-a-variant")) == 7200.0  # the channel's step
    assert within(act("cart", "email", "first")) is None
    assert within(act("gone", "sms", "nudge")) is None
    assert rule_within(lambda: None)(act("cart", "sms", "nudge")) is None


def test_quiet_hours_hold_in_the_customer_zone() -> None:
    zones = {"ny": "America/New_York"}
    hold = quiet_hold(lambda: RS, zones.get)
    late_utc = to_ms(datetime(2026, 6, 1, 23, 30, tzinfo=UTC))  # 19:30 in New York
    assert hold(act("cart", "sms", "nudge", "ny"), late_utc) is None
    until = hold(act("cart", "sms", "nudge", "other"), late_utc)  # UTC: quiet until 09:00
    assert until == to_ms(datetime(2026, 6, 2, 9, 0, tzinfo=UTC))
    assert hold(act("hook", "webhook", "t", "other"), late_utc) is None  # never for webhooks
    noon = to_ms(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    assert hold(act("cart", "sms", "nudge", "other"), noon) is None
