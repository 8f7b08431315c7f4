"""What delivery asks the rule set about an action made earlier: its send step's
``deliver_within`` and its rule's quiet hours (a send delayed by an outage still keeps
them). Pure functions of the rule set, a customer's time zone and a time; the runtimes
wire them into delivery (engine/embedded/outbox.py, engine/distributed/delivery.py).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.localtime import in_range, next_local
from engine.types import Action
from rules.compiler import Send
from rules.ruleset import RuleSet

__all__ = ["quiet_hold", "rule_within"]

RuleSetRef = Callable[[], RuleSet | None]
TimezoneOf = Callable[[str], str | None]


def rule_within(ruleset: RuleSetRef) -> Callable[[Action], float | None]:
    """``within(action)``: seconds from the rule send step that made ``action`` (matched
    by rule, channel and template, else the rule's first send on the channel), or
    ``None`` when the step sets no ``deliver_within`` or the rule is gone."""
    cache: dict[tuple[int, str, str, str], float | None] = {}

    def within(action: Action) -> float | None:
        rs = ruleset()
        if rs is None:
            return None
        key = (id(rs), action.rule_id, action.channel, action.template)
        if key in cache:
            return cache[key]
        if len(cache) > 10_000:
            cache.clear()
        rule = rs.rules.get(action.rule_id)
        found: float | None = None
        if rule is not None:
            sends = [op for op in rule.ops if isinstance(op, Send) and op.channel == action.channel]
            exact = [op for op in sends if op.template == action.template]
            for op in exact or sends:
                if op.within_ms is not None:
                    found = op.within_ms / 1000
                    break
        cache[key] = found
        return found

    return within


def quiet_hold(ruleset: RuleSetRef, timezone_of: TimezoneOf) -> Callable[[Action, int], int | None]:
    """``hold(action, now)``: the end of the rule's quiet hours in the customer's time
    zone (the rule set's default zone if the customer has none) when ``now`` is inside
    them, else ``None``. Webhooks are never held (as at the send step)."""

    def hold(action: Action, now: int) -> int | None:
        rs = ruleset()
        if rs is None or action.channel == "webhook":
            return None
        rule = rs.rules.get(action.rule_id)
        if rule is None or rule.quiet is None:
            return None
        tz = timezone_of(action.customer_id) or rs.settings.default_timezone
        if in_range(now, tz, rule.quiet):
            return next_local(now, tz, rule.quiet[1])
        return None

    return hold
