"""A testing kit for rule files: virtual clock, list source, list sink, memory store.

    kit = RuleKit.from_paths(["rules/recipes"])
    kit.send("cart_item_added", "c1", properties={"product_id": "p1", "price": 30})
    kit.advance(hours=4)
    assert kit.sent(rule_id="abandoned-cart")[0].template == "cart_reminder"

Time starts at ``START`` (2026-01-05T12:00:00Z, a Monday noon in UTC) unless given.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.clock import VirtualClock
from engine.driver import Driver
from engine.output import Output
from engine.types import Action, Conversion, Event, Fire, from_ms
from rules.ruleset import RuleSet, load_ruleset, load_texts

__all__ = ["START", "ListSink", "RuleKit", "VirtualClock", "make_event"]

START = int(datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp() * 1000)
_ids = itertools.count(1)


def make_event(
    type: str,
    customer_id: str,
    at: int,
    properties: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> Event:
    """An Event at epoch-ms ``at`` with a fresh id unless one is given."""
    return Event(
        event_id=event_id or f"evt-{next(_ids)}",
        type=type,
        customer_id=customer_id,
        timestamp=from_ms(at),
        properties=properties or {},
        context=context or {},
    )


class ListSink:
    """Collects every output: actions, fires, conversions, expression errors."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.fires: list[Fire] = []
        self.conversions: list[Conversion] = []
        self.exposures: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def __call__(self, out: Output) -> None:
        self.actions += out.actions
        self.fires += out.fires
        self.conversions += out.conversions
        self.exposures += out.exposures
        self.errors += out.errors


class RuleKit:
    """A driver over a rule set with a virtual clock and a list sink."""

    def __init__(self, ruleset: RuleSet, start: int = START) -> None:
        self.clock = VirtualClock(start)
        self.sink = ListSink()
        self.driver = Driver(ruleset, clock=self.clock, on_output=self.sink)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path] | None = None, start: int = START) -> RuleKit:
        return cls(load_ruleset(paths), start)

    @classmethod
    def from_yaml(cls, *texts: str, start: int = START) -> RuleKit:
        return cls(load_texts((f"<rule {i}>", t) for i, t in enumerate(texts)), start)

    @property
    def now(self) -> int:
        return self.clock.now()

    def deploy(self, *texts: str) -> RuleSet:
        """Swap in a new rule set as the runtimes deploy one: keeping earlier versions of
        its rules for the flows open on them (rules/versions.py). Returns it."""
        processor = self.driver.processor
        rs = load_texts(
            ((f"<rule {i}>", t) for i, t in enumerate(texts)), processor.ruleset.history()
        )
        processor.ruleset = rs
        return rs

    def send(
        self,
        type: str,
        customer_id: str,
        properties: dict[str, Any] | None = None,
        *,
        at: int | None = None,
        context: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Output:
        """Process an event stamped ``at`` (default: now) at the current clock time."""
        ev = make_event(
            type, customer_id, self.now if at is None else at, properties, context, event_id
        )
        return self.driver.process(ev)

    def process(self, event: Event) -> Output:
        return self.driver.process(event)

    def advance(self, *, days: float = 0, hours: float = 0, minutes: float = 0) -> int:
        """Move the clock forward, firing timers as they come due (outputs go to the
        sink); returns how many timers fired."""
        ms = int(((days * 24 + hours) * 60 + minutes) * 60_000)
        return self.driver.advance(ms)

    def sent(self, rule_id: str | None = None, channel: str | None = None) -> list[Action]:
        return [
            a
            for a in self.sink.actions
            if (rule_id is None or a.rule_id == rule_id)
            and (channel is None or a.channel == channel)
        ]

    def fired(self, rule_id: str | None = None, outcome: str | None = None) -> list[Fire]:
        return [
            f
            for f in self.sink.fires
            if (rule_id is None or f.rule_id == rule_id)
            and (outcome is None or f.outcome == outcome)
        ]

    def state(self, customer_id: str) -> Any:
        return self.driver.store.get(customer_id)
