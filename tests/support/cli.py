"""Running ``nudge replay`` / ``nudge loadtest`` (``python -m load_tests.cli``) as a
subprocess from tests, without a write token from the caller's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "run_cli"]

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "load_tests.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "NUDGE_WRITE_TOKEN"},
    )
