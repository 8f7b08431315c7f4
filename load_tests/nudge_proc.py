"""Start `nudge run` as a subprocess and wait until it is ready: for benchmarks and tests
that drive a real engine over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["start_nudge_run", "wait_ready"]


def start_nudge_run(
    data: Path,
    port: int,
    sinks: Path,
    *,
    tokens: tuple[str, str],
    log: Path | None = None,
    rules: Path | None = None,
    extra: tuple[str, ...] = ("--synchronous", "NORMAL"),
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`nudge run` on loopback ``port`` with (write, admin) ``tokens`` from the environment;
    output appended to ``log`` (or discarded)."""
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "run",
        "--data",
        str(data),
        "--port",
        str(port),
        "--sinks",
        str(sinks),
    ]
    if rules is not None:
        cmd += ["--rules", str(rules)]
    env = {**os.environ, "NUDGE_WRITE_TOKEN": tokens[0], "NUDGE_ADMIN_TOKEN": tokens[1]}
    if log is None:
        return subprocess.Popen(
            [*cmd, *extra], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with log.open("ab") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(
            [*cmd, *extra], env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT
        )


def wait_ready(
    port: int, proc: subprocess.Popen[bytes], log: Path | None = None, timeout: float = 60.0
) -> None:
    """Poll /readyz until 200; AssertionError (with the log's tail) if the process exits or
    the deadline passes."""
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > end:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise AssertionError("engine not ready: " + tail)
        time.sleep(0.05)
