"""Compare an engine's action log with the oracle's expected actions.

Contract of :func:`diff_actions` (inputs: action dicts as printed by ``nudge backtest``,
in any order):

1. Actions pair by ``idempotency_key``. A key that appears ``n > 1`` times in the actual
   log counts ``n - 1`` **duplicates** (a second send of the same action).
2. Expected and actual actions left unpaired then pair by ``(rule_id, customer_id,
   channel, template)``, in fire_at order: such a pair is the same message under another
   key and is reported as **mismatched** (field ``idempotency_key``).
3. For each pair: actual ``fire_at`` later than expected by more than ``tolerance_ms`` is
   **late** (lateness in ms), earlier by more than ``tolerance_ms`` is **early**; any other
   differing field (channel, template, params, variant, rule_id, customer_id) is
   **mismatched**.
4. Expected actions still unpaired are **missing**, actual ones **extra**.

``DiffReport.ok`` is true when every category is empty. Counts are exact; examples are
capped (``max_examples``). CLI: ``python -m load_tests.diff expected.jsonl actual.jsonl
[--tolerance-ms N]`` prints the report and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

__all__ = ["DiffReport", "diff_actions", "main", "read_jsonl"]

_FIELDS = ("rule_id", "customer_id", "channel", "template", "params", "variant")


def _ms(fire_at: str) -> int:
    dt = datetime.fromisoformat(fire_at)
    return round(dt.timestamp() * 1000)


@dataclass
class DiffReport:
    """The differences between expected and actual actions (see the module docstring)."""

    expected: int = 0
    actual: int = 0
    matched: int = 0
    missing: int = 0
    extra: int = 0
    duplicate: int = 0
    late: int = 0
    early: int = 0
    mismatched: int = 0
    max_late_ms: int = 0
    max_early_ms: int = 0
    examples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    max_examples: int = 5

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.extra
            or self.duplicate
            or self.late
            or self.early
            or self.mismatched
        )

    def _example(self, kind: str, item: Any) -> None:
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(item)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "expected": self.expected,
            "actual": self.actual,
            "matched": self.matched,
            "missing": self.missing,
            "extra": self.extra,
            "duplicate": self.duplicate,
            "late": self.late,
            "max_late_ms": self.max_late_ms,
            "early": self.early,
            "max_early_ms": self.max_early_ms,
            "mismatched": self.mismatched,
            "examples": dict(self.examples),
        }


def _compare(
    report: DiffReport, exp: dict[str, Any], act: dict[str, Any], tolerance_ms: int, same_key: bool
) -> None:
    report.matched += 1
    delta = _ms(act["fire_at"]) - _ms(exp["fire_at"])
    if delta > tolerance_ms:
        report.late += 1
        report.max_late_ms = max(report.max_late_ms, delta)
        report._example("late", {"late_ms": delta, "expected": exp, "actual": act})
    elif -delta > tolerance_ms:
        report.early += 1
        report.max_early_ms = max(report.max_early_ms, -delta)
        report._example("early", {"early_ms": -delta, "expected": exp, "actual": act})
    fields = [f for f in _FIELDS if exp.get(f) != act.get(f)]
    if not same_key:
        fields.append("idempotency_key")
    if fields:
        report.mismatched += 1
        report._example("mismatched", {"fields": fields, "expected": exp, "actual": act})


def _message(a: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        a.get("rule_id", ""),
        a.get("customer_id", ""),
        a.get("channel", ""),
        a.get("template", ""),
    )


def diff_actions(
    expected: Iterable[dict[str, Any]],
    actual: Iterable[dict[str, Any]],
    tolerance_ms: int = 0,
    max_examples: int = 5,
) -> DiffReport:
    """Diff two action logs (any order); see the module docstring for the rules."""
    report = DiffReport(max_examples=max_examples)
    exp_by_key: dict[str, dict[str, Any]] = {}
    for a in expected:
        report.expected += 1
        exp_by_key[a["idempotency_key"]] = a
    act_by_key: dict[str, dict[str, Any]] = {}
    for a in actual:
        report.actual += 1
        key = a["idempotency_key"]
        if key in act_by_key:
            report.duplicate += 1
            report._example("duplicate", a)
        else:
            act_by_key[key] = a
    left_exp: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for key, exp in exp_by_key.items():
        act = act_by_key.pop(key, None)
        if act is None:
            left_exp[_message(exp)].append(exp)
        else:
            _compare(report, exp, act, tolerance_ms, same_key=True)
    left_act: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for act in act_by_key.values():
        left_act[_message(act)].append(act)
    for msg, exps in left_exp.items():
        exps.sort(key=lambda a: a["fire_at"])
        acts = sorted(left_act.pop(msg, []), key=lambda a: a["fire_at"])
        for exp, act in zip(exps, acts, strict=False):
            _compare(report, exp, act, tolerance_ms, same_key=False)
        for exp in exps[len(acts) :]:
            report.missing += 1
            report._example("missing", exp)
        for act in acts[len(exps) :]:
            report.extra += 1
            report._example("extra", act)
    for acts in left_act.values():
        for act in acts:
            report.extra += 1
            report._example("extra", act)
    return report


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Action dicts from a JSONL file (blank lines skipped)."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 1 on any difference, 0 when the logs agree."""
    ap = argparse.ArgumentParser(
        prog="python -m load_tests.diff",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--tolerance-ms", type=int, default=0)
    ap.add_argument("--examples", type=int, default=5)
    args = ap.parse_args(argv)
    report = diff_actions(
        read_jsonl(args.expected), read_jsonl(args.actual), args.tolerance_ms, args.examples
    )
    sys.stdout.buffer.write(orjson.dumps(report.summary(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
