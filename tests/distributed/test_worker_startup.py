"""``nudge worker`` start-up errors are one line on stderr and exit status 1, before
anything starts: a port in use, a data directory that cannot be written, Kafka down.
(A topic with another partition count: tests/distributed/test_topics.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.distributed.conftest import ROOT

DOWN = "kafka://127.0.0.1:1"  # nothing listens there


def _worker(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker", "--broker", DOWN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_http_or_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        for flag in ("--http-port", "--metrics-port"):
            line = _one_line(_worker(flag, port, "--data", str(tmp_path)))
            assert line == (
                f"nudge worker: cannot listen on 127.0.0.1:{port}: address already in use "
                "(another nudge process, or another program?)"
            )


def test_data_dir_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    data = tmp_path / "file" / "data"  # under a regular file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    line = _one_line(_worker("--http-port", port, "--data", str(data)))
    assert line == f"nudge worker: data directory {data}: Not a directory"


def test_kafka_unreachable() -> None:
    line = _one_line(_worker())
    assert line.startswith(f"nudge worker: {DOWN}: cannot reach Kafka (")
