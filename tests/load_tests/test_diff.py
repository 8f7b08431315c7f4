"""The action-log diff catches planted missing, extra, duplicate, late and altered actions."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from load_tests.diff import diff_actions, main


def _action(n: int, fire_at: str = "2026-01-05T10:00:00.000Z") -> dict[str, Any]:
    return {
        "fire_at": fire_at,
        "rule_id": "abandoned-cart",
        "customer_id": f"c{n}",
        "channel": "email",
        "template": "cart_reminder",
        "params": {"cart_value": 10.0, "items": 1},
        "variant": "a",
        "idempotency_key": f"k{n}",
    }


EXPECTED = [_action(i) for i in range(10)]


def test_identical_logs_in_any_order_agree() -> None:
    report = diff_actions(EXPECTED, list(reversed(EXPECTED)))
    assert report.ok
    assert report.matched == 10


def test_planted_differences_are_each_caught() -> None:
    actual = copy.deepcopy(EXPECTED)
    del actual[0]  # missing
    actual.append(_action(99))  # extra
    actual.append(copy.deepcopy(actual[1]))  # duplicate of k2
    actual[2]["fire_at"] = "2026-01-05T10:00:01.500Z"  # k3 late by 1.5 s
    report = diff_actions(EXPECTED, actual)
    assert not report.ok
    assert (report.missing, report.extra, report.duplicate, report.late) == (1, 1, 1, 1)
    assert report.max_late_ms == 1500
    assert report.examples["missing"][0]["idempotency_key"] == "k0"
    assert report.examples["extra"][0]["idempotency_key"] == "k99"
    assert report.examples["duplicate"][0]["idempotency_key"] == "k2"
    assert report.examples["late"][0]["late_ms"] == 1500
    assert report.mismatched == report.early == 0


def test_tolerance_absorbs_small_lateness() -> None:
    actual = copy.deepcopy(EXPECTED)
    actual[0]["fire_at"] = "2026-01-05T10:00:00.250Z"
    assert diff_actions(EXPECTED, actual, tolerance_ms=250).ok
    report = diff_actions(EXPECTED, actual, tolerance_ms=249)
    assert report.late == 1


def test_early_and_altered_and_rekeyed_actions() -> None:
    actual = copy.deepcopy(EXPECTED)
    actual[0]["fire_at"] = "2026-01-05T09:59:00.000Z"
    actual[1]["params"] = {"cart_value": 11.0, "items": 1}
    actual[2]["idempotency_key"] = "other"
    report = diff_actions(EXPECTED, actual)
    assert report.early == 1
    assert report.max_early_ms == 60_000
    assert report.mismatched == 2
    assert report.missing == report.extra == 0
    fields = sorted(tuple(e["fields"]) for e in report.examples["mismatched"])
    assert fields == [("idempotency_key",), ("params",)]


@pytest.mark.parametrize(("same", "code"), [(True, 0), (False, 1)])
def test_cli_exit_status(tmp_path: Any, same: bool, code: int) -> None:
    exp = tmp_path / "expected.jsonl"
    act = tmp_path / "actual.jsonl"
    exp.write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in EXPECTED))
    actual = EXPECTED if same else EXPECTED[1:]
    act.write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in actual))
    assert main([str(exp), str(act)]) == code
