"""`nudge run` processes under faults (issue 21): a second engine on a data directory in
use, an unusable data directory, a port in use, a broken pipe; file modes. Real
processes over real HTTP on loopback; deadlines guard against hangs, nothing is timed."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.deadletter import DeadLetterStore
from engine.testing import START
from engine.types import Action, iso
from load_tests.nudge_proc import start_nudge_run, wait_ready
from tests.engine.embedded.conftest import stored

pytestmark = pytest.mark.slow

WRITE = "test-write-token"
ADMIN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nudge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NUDGE_WRITE_TOKEN": WRITE, "NUDGE_ADMIN_TOKEN": ADMIN, **(env or {})},
        check=False,
    )


def request(
    method: str, port: int, path: str, body: Any = None, token: str = ADMIN
) -> tuple[int, Any]:
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def orders(cid: str, first: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{cid}-o{i}",
            "type": "order_completed",
            "customer_id": cid,
            "timestamp": iso(START),
            "properties": {"order_id": f"{cid}-o{i}", "total": 10.0},
        }
        for i in range(first, first + n)
    ]


def one_line_error(proc: subprocess.CompletedProcess[str], *parts: str) -> str:
    """The process failed with exactly one line on stderr holding ``parts``."""
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def sinks_file(tmp_path: Path) -> Path:
    path = tmp_path / "sinks.json"
    path.write_text('{"default": "log"}')
    return path


def until(check: Any, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_second_engine_on_a_data_dir_in_use_refuses_and_first_is_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_CHECKPOINT_INTERVAL", "0.2")
    data, sinks, log = tmp_path / "data", sinks_file(tmp_path), tmp_path / "first.log"
    port = free_port()
    first = start_nudge_run(data, port, sinks, tokens=(WRITE, ADMIN), log=log)
    try:
        wait_ready(port, first, log)
        assert request("POST", port, "/v1/events", orders("alice", 0, 3), WRITE)[0] == 202
        until(lambda: "alice" in stored(data)[0], "alice's first checkpoint")
        files_before = sorted(p.name for p in data.iterdir())

        second = nudge(
            "run", "--data", str(data), "--port", str(free_port()), "--sinks", str(sinks)
        )
        line = one_line_error(second, "in use by another engine", f"pid {first.pid}", str(data))
        assert line.startswith("nudge run: data directory")
        assert second.returncode == 1

        # the first one is untouched: ready, reads, writes, checkpoints
        assert first.poll() is None
        assert request("GET", port, "/readyz")[0] == 200
        status, body = request("GET", port, "/v1/customers/alice")
        assert status == 200, body
        assert body["profile"]["orders"] == 3
        seq_before = stored(data)[0]["alice"]
        assert request("POST", port, "/v1/events", orders("alice", 3, 2), WRITE)[0] == 202
        assert request("GET", port, "/v1/customers/alice")[1]["profile"]["orders"] == 5
        until(lambda: stored(data)[0]["alice"] > seq_before, "a checkpoint after the refusal")
        assert {p.name for p in data.iterdir()} >= set(files_before) - {
            n for n in files_before if n.endswith(".spool")
        }
        # owner-only files (issue 21: they were 0644)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for path in data.iterdir():
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    finally:
        first.terminate()
        first.wait(timeout=60)
    # the lock went with the process: a restart on the same directory starts
    again = start_nudge_run(data, port, sinks, tokens=(WRITE, ADMIN), log=log)
    try:
        wait_ready(port, again, log)
        assert request("GET", port, "/v1/customers/alice")[1]["profile"]["orders"] == 5
    finally:
        again.terminate()
        again.wait(timeout=60)


def test_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = nudge("run", "--data", str(blocker / "data"), "--port", str(free_port()))
    line = one_line_error(proc, "cannot use data directory", str(blocker / "data"))
    assert "Not a directory" in line
    assert proc.returncode == 1


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = nudge(
            "run", "--data", str(tmp_path / "data"), "--port", str(port), "--host", "127.0.0.1"
        )
    one_line_error(proc, f"cannot listen on 127.0.0.1:{port}", "address already in use")
    assert proc.returncode == 1


def test_deadletter_list_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = DeadLetterStore(data / "deadletter.db")
    try:
        for i in range(5000):
            action = Action("r", 1, f"c{i}", "webhook", "t", {"x": "y" * 200}, "", f"k{i}", 0)
            store.add(action, "hook", "refused", 1)
    finally:
        store.close()
    env = {**os.environ, "NUDGE_WRITE_TOKEN": WRITE, "NUDGE_ADMIN_TOKEN": ADMIN}
    cmd = f"{sys.executable} -m engine.cli deadletter list --data {data} --limit 5000 | head -1"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.stdout.count("\n") == 1
    assert orjson.loads(proc.stdout)["key"] == "k0"
    assert "Traceback" not in proc.stderr
    assert "BrokenPipeError" not in proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.returncode == 141
