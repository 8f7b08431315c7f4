"""Rule semantics a marketer can trust (docs/semantics.md): which open an ``if`` counts,
re-checks before a send, priority among same-instant timers, late duplicates, and goal
conversions per entry. Scenario tests under the virtual clock, negative cases included."""

from __future__ import annotations

from engine.testing import RuleKit

_SETTINGS = """
kind: settings
default_consent: {email: true, sms: true}
channel_caps: {email: 1/1d}
"""


def _timed(rule_id: str, priority: int) -> str:
    return f"""
id: {rule_id}
priority: {priority}
trigger: {{event: customer_signed_up}}
steps:
  - wait: 1h
  - send: {{channel: email, template: {rule_id}}}
"""


def test_same_instant_timers_fire_by_priority_then_rule_id() -> None:
    # "a-low" sorts first by id; "z-high" has the higher priority: it takes the email cap
    kit = RuleKit.from_yaml(_SETTINGS, _timed("a-low", 1), _timed("z-high", 50))
    kit.send("customer_signed_up", "c1")
    kit.advance(hours=1)
    assert [a.template for a in kit.sent()] == ["z-high"]
    assert [f.rule_id for f in kit.fired(outcome="suppressed_channel_cap")] == ["a-low"]


def test_same_priority_timers_fire_by_rule_id() -> None:
    kit = RuleKit.from_yaml(_SETTINGS, _timed("b-rule", 5), _timed("a-rule", 5))
    kit.send("customer_signed_up", "c1")
    kit.advance(hours=1)
    assert [a.template for a in kit.sent()] == ["a-rule"]


def test_a_deploy_reorders_pending_timers() -> None:
    kit = RuleKit.from_yaml(_SETTINGS, _timed("a-low", 1), _timed("z-high", 50))
    kit.send("customer_signed_up", "c1")
    # the new version swaps the priorities while both timers are pending
    kit.driver.processor.ruleset = RuleKit.from_yaml(
        _SETTINGS, _timed("a-low", 90), _timed("z-high", 50)
    ).driver.processor.ruleset
    kit.advance(hours=1)
    assert [a.template for a in kit.sent()] == ["a-low"]
