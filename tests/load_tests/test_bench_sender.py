"""load_tests/bench_sender.py end to end, small: the sender against the null sink, and
the webhook receiver under the blaster; every request is accounted for on both sides
(the CPU figures it prints are for humans to compare, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _bench(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "load_tests.bench_sender", "--cpu", "-1", "--sink-cpu", "-1"]
    res = subprocess.run(
        [*cmd, *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    return dict(orjson.loads(res.stdout.decode().strip().splitlines()[-1]))


def test_sender_against_the_null_sink() -> None:
    got = _bench("--rate", "2000", "--seconds", "1", "--batch", "20", "--connections", "4")
    assert got["requests"] == 100
    assert got["events"] == 2000
    assert got["statuses"] == {"202": 100}
    sink = got["sink"]
    assert sink["requests"] == 100
    assert sink["events"] == 2000  # every event's bytes reached the sink
    assert isinstance(got["cpu_us_per_request"], float)


def test_receiver_under_the_blaster() -> None:
    got = _bench("--receiver", "raw", "--rate", "1000", "--seconds", "1", "--connections", "4")
    assert got["actions_received"] == 1000
    assert got["blaster"]["sent"] == 1000
    assert got["blaster"]["statuses"] == {"200": 1000}
    assert got["probes_measured"] == 10  # one action in 100 is a probe
