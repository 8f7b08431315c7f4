"""Send-by deadlines: how long after an action was made it is still worth sending.

The deadline of an action is ``fire_at + deliver_within``, where ``deliver_within`` is,
first found: the rule's send step (``send: {deliver_within: 2h}``), the sink's config
(``deliver_within: 6h``), the channel's default (:data:`CHANNEL_DEFAULTS`). ``None``
everywhere means no deadline: the sink's retry horizon alone bounds the retries.

An action past its deadline is not sent: it is recorded as ``expired`` (metric, and the
dead-letter store with the reason), so an outage never turns into a burst of stale
"your cart is waiting" texts when the provider comes back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.types import Action, Millis

__all__ = ["CHANNEL_DEFAULTS", "DURATION_PATTERN", "Deadlines", "RuleWithin", "parse_seconds"]

_HOUR = 3600.0
CHANNEL_DEFAULTS: dict[str, float | None] = {
    "sms": 4 * _HOUR,  # a text is about now: a cart reminder at 3 a.m. is worse than none
    "push": 4 * _HOUR,
    "email": 24 * _HOUR,  # an email may arrive later the same day
    "webhook": None,  # a CRM or a data feed wants every action: the horizon bounds it
}
"""Default ``deliver_within`` per channel, seconds (``None``: no deadline)."""

DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d|w)$"
_DUR = re.compile(DURATION_PATTERN)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": _HOUR, "d": 86_400.0, "w": 604_800.0}

RuleWithin = Callable[[Action], float | None]
"""The rule send step's ``deliver_within`` for an action, seconds (``None``: not set)."""


def parse_seconds(text: str | float) -> float:
    """``"2h"`` -> 7200.0 (a number is seconds already); ValueError if not a duration."""
    if isinstance(text, int | float):
        return float(text)
    m = _DUR.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 2h, 1d)")
    return int(text[: m.start(1)]) * _UNITS[m.group(1)]


@dataclass(frozen=True)
class Deadlines:
    """Where deadlines come from: per-sink values (seconds, by sink name), the channel
    defaults, and a rule lookup (wired by the runtime from the running rule set)."""

    per_sink: Mapping[str, float | None] = field(default_factory=dict)
    per_channel: Mapping[str, float | None] = field(default_factory=lambda: CHANNEL_DEFAULTS)
    per_rule: RuleWithin | None = None

    def within(self, action: Action, sink_name: str) -> float | None:
        """Seconds ``action`` may wait to be sent through ``sink_name`` (``None``: no
        deadline)."""
        if self.per_rule is not None:
            own = self.per_rule(action)
            if own is not None:
                return own
        if sink_name in self.per_sink:
            return self.per_sink[sink_name]
        return self.per_channel.get(action.channel)

    def deadline(self, action: Action, sink_name: str) -> Millis | None:
        """The epoch ms after which ``action`` is not sent (``None``: none)."""
        within = self.within(action, sink_name)
        return None if within is None else action.fire_at + int(within * 1000)
