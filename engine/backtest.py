"""``nudge backtest``: run the core over a recorded JSONL trace in virtual time.

Virtual time follows event timestamps (never backwards); timers due between events fire in
order; after the last event timers keep firing up to ``until`` (default: the last event
time + 400 days). Actions go to ``out`` one JSON object per line, ordered by fire_at, then
customer_id, then rule_id; same input, same bytes. A malformed line is reported with its
line number and skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from engine.driver import Driver
from engine.events import decode_event
from engine.exceptions import EventError
from engine.output import Output
from engine.types import Action, iso
from rules.ruleset import RuleSet

__all__ = ["BacktestResult", "action_line", "backtest", "read_trace", "write_actions"]

DRAIN_DAYS = 400
_DAY = 86_400_000


@dataclass
class BacktestResult:
    events: int = 0
    duplicates: int = 0
    too_late: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # line, field, message
    actions: list[Action] = field(default_factory=list)
    fires: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    conversions: Counter[tuple[str, str]] = field(default_factory=Counter)
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def sorted_actions(self) -> list[Action]:
        return sorted(
            self.actions, key=lambda a: (a.fire_at, a.customer_id, a.rule_id, a.idempotency_key)
        )

    def summary(self) -> dict[str, Any]:
        by_rule = Counter(a.rule_id for a in self.actions)
        reasons = Counter(
            m.split(":")[0] if m.startswith("malformed") else f for _, f, m in self.rejected
        )
        return {
            "events": self.events,
            "duplicates_ignored": self.duplicates,
            "too_late_for_triggers": self.too_late,
            "rejected": len(self.rejected),
            "rejected_by_field": dict(sorted(reasons.items())),
            "actions": len(self.actions),
            "actions_by_rule": dict(sorted(by_rule.items())),
            "fires_by_rule_variant_outcome": {
                "/".join(k): v for k, v in sorted(self.fires.items())
            },
            "conversions_by_rule_variant": {
                "/".join(k): v for k, v in sorted(self.conversions.items())
            },
            # goal windows opened: conversions / exposures is each arm's rate
            "exposures_by_rule_variant": {
                "/".join(k): v for k, v in sorted(self.exposures.items())
            },
            "expression_errors": dict(self.errors.most_common(10)),
        }


def read_trace(lines: Iterable[bytes], result: BacktestResult) -> Iterator[Any]:
    """Decode JSONL lines; bad lines are recorded in ``result.rejected`` and skipped."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield decode_event(line)
        except EventError as err:
            result.rejected.append((n, err.field, err.message))


def action_line(a: Action) -> bytes:
    return orjson.dumps(
        {
            "fire_at": iso(a.fire_at),
            "rule_id": a.rule_id,
            "customer_id": a.customer_id,
            "channel": a.channel,
            "template": a.template,
            "params": a.params,
            "variant": a.variant,
            "idempotency_key": a.idempotency_key,
        }
    )


def backtest(ruleset: RuleSet, lines: Iterable[bytes], until: int | None = None) -> BacktestResult:
    result = BacktestResult()

    def collect(out: Output) -> None:
        result.actions += out.actions
        for f in out.fires:
            result.fires[(f.rule_id, f.variant, f.outcome)] += 1
        for c in out.conversions:
            result.conversions[(c.rule_id, c.variant)] += 1
        for x in out.exposures:
            result.exposures[x] += 1
        for e in out.errors:
            result.errors[e] += 1

    driver = Driver(ruleset, on_output=collect)
    last = None
    for ev in read_trace(lines, result):
        result.events += 1
        if last is None:
            driver.clock.set(ev.ts)
        out = driver.feed(ev)
        if out.duplicate:
            result.duplicates += 1
        elif out.too_late:
            result.too_late += 1
        last = driver.clock.now()
    if last is not None or until is not None:
        end = until if until is not None else (last or 0) + DRAIN_DAYS * _DAY
        driver.drain(end)
    return result


def write_actions(result: BacktestResult, out: IO[bytes]) -> None:
    for a in result.sorted_actions():
        out.write(action_line(a) + b"\n")
