"""Data at rest (issue 24): with ``NUDGE_DATA_KEY`` a data directory holds no customer's
email or phone in any byte of any file, checkpointed or only journaled, with flows open
and actions waiting in the outbox; the same directory reopened with the key recovers
every customer and delivers the waiting actions; without the key, or with another, the
engine refuses to start with one line. Every file of the data directory is owner-only.
A real `nudge run` process over real HTTP; deadlines guard against hangs."""

from __future__ import annotations

import signal
import sqlite3
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.embedded.storage.crypt import generate_key
from load_tests.nudge_proc import start_nudge_run, wait_ready
from tests.engine.embedded.test_erase import _events
from tests.engine.embedded.test_faults_process import (
    ADMIN,
    WRITE,
    free_port,
    nudge,
    request,
    until,
)

pytestmark = pytest.mark.slow

PEOPLE = {  # id -> (email, phone)
    "rest-a": ("ada.rest@example.com", "+15550170001"),
    "rest-b": ("bo.rest@example.com", "+15550170002"),
    "rest-c": ("cy.rest@example.com", "+15550170003"),
    "rest-d": ("di.rest@example.com", "+15550170004"),
}
FIRST, LATER = ("rest-a", "rest-b"), ("rest-c", "rest-d")
WRONG = "not-a-token-7781"


def _hits(data: Path) -> list[tuple[str, str]]:
    """(file, value) for every file of ``data`` holding an email or a phone."""
    needles = [v.encode() for pair in PEOPLE.values() for v in pair]
    out = []
    for path in sorted(data.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            out += [(path.name, n.decode()) for n in needles if n in raw]
    return out


def _modes(data: Path) -> dict[str, str]:
    """Every entry of ``data`` (the directory itself as ``.``) with its permission bits."""
    out = {".": oct(stat.S_IMODE(data.stat().st_mode))}
    for path in sorted(data.rglob("*")):
        out[str(path.relative_to(data))] = oct(stat.S_IMODE(path.stat().st_mode))
    return out


def _sinks(tmp_path: Path, hook_port: int, name: str) -> Path:
    """Emails to an actions file outside the data directory (sink output: docs/operations.md,
    "Data at rest"); webhooks (the VIP rule) to ``hook_port``."""
    path = tmp_path / f"{name}.json"
    path.write_bytes(
        orjson.dumps(
            {
                "default": "file",
                "sinks": {
                    "file": {"type": "jsonl", "path": str(tmp_path / "out" / "actions.jsonl")},
                    "hook": {"type": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook"},
                },
                "routes": [{"channel": "webhook", "sink": "hook"}],
            }
        )
    )
    return path


class _Hook(BaseHTTPRequestHandler):
    got: list[Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.got.append(orjson.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_port() -> int:
    return free_port()


def _receiver(port: int) -> tuple[ThreadingHTTPServer, list[Any]]:
    got: list[Any] = []
    handler = type("Hook", (_Hook,), {"got": got})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def _post(port: int, cids: tuple[str, ...]) -> None:
    body = [e for cid in cids for e in _events(cid, 4, PEOPLE[cid][0], PEOPLE[cid][1])]
    assert request("POST", port, "/v1/events", body, WRITE)[0] == 202


def _flowing(port: int, cid: str) -> bool:
    status, view = request("GET", port, f"/v1/customers/{cid}")
    return status == 200 and bool(view["flows"])


def _pending(data: Path) -> int:
    """Actions committed to the outbox and not delivered (the status column is plain)."""
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()[0])
    finally:
        db.close()


def test_encrypted_data_dir_holds_no_email_or_phone_and_opens_only_with_its_key(
    tmp_path: Path, hook_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    key = generate_key()
    down = _sinks(tmp_path, hook_port, "down")  # nothing listens there yet
    port = free_port()
    log = tmp_path / "run.log"
    monkeypatch.setenv("NUDGE_DATA_KEY", key)
    monkeypatch.setenv("NUDGE_CHECKPOINT_INTERVAL", "3600")  # only the stop checkpoints
    proc = start_nudge_run(data, port, down, tokens=(WRITE, ADMIN), log=log)
    try:
        wait_ready(port, proc, log)
        _post(port, FIRST)
        for cid in FIRST:
            until(lambda cid=cid: _flowing(port, cid), f"{cid}'s flows open")
        proc.send_signal(signal.SIGTERM)  # graceful: a checkpoint writes their states
        assert proc.wait(timeout=60) == 0

        proc = start_nudge_run(data, port, down, tokens=(WRITE, ADMIN), log=log)
        wait_ready(port, proc, log)
        _post(port, LATER)  # journaled, never checkpointed
        for cid in LATER:
            until(lambda cid=cid: _flowing(port, cid), f"{cid}'s flows open")
        until(lambda: _pending(data) >= 2, "webhooks waiting for the receiver")
        pending = _pending(data)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    names = {p.name for p in data.iterdir()}
    assert {"journal.db", "states.db", "state.db", "addresses.db"} <= names
    assert any(n.endswith("-wal") for n in names)  # not checkpointed into the files
    assert _hits(data) == []
    # owner-only, files created later (WAL, SHM, suppressed.db, tokens) included
    modes = _modes(data)
    assert modes.pop(".") == "0o700"
    assert {n: m for n, m in modes.items() if m != "0o600"} == {}, modes

    # without the key, or with another: one line, exit 1, nothing served
    for env, words in ((None, "set NUDGE_DATA_KEY"), (generate_key(), "is not the key")):
        if env is None:
            monkeypatch.delenv("NUDGE_DATA_KEY")
        else:
            monkeypatch.setenv("NUDGE_DATA_KEY", env)
        bad = start_nudge_run(data, port, down, tokens=(WRITE, ADMIN), log=tmp_path / "bad.log")
        assert bad.wait(timeout=60) == 1
        lines = (tmp_path / "bad.log").read_text().strip().splitlines()
        assert "encrypted at rest" in lines[-1] or words in lines[-1], lines
        assert words in lines[-1]
        assert len(lines) == 1, lines
        (tmp_path / "bad.log").unlink()

    # `nudge erase --verify` (only looking): without the key the sealed rows are counted,
    # with it they are opened and the customer's email is found in them
    monkeypatch.delenv("NUDGE_DATA_KEY")
    cid, (email, _) = "rest-d", PEOPLE["rest-d"]
    blind = nudge("erase", cid, "--verify", "--data", str(data), "--value", email)
    assert "sealed row(s) not searched" in blind.stderr
    assert "(sealed row)" not in blind.stdout
    seen = nudge("erase", cid, "--verify", "--data", str(data), "--value", email,
                 env={"NUDGE_DATA_KEY": key})  # fmt: skip
    assert seen.returncode == 1
    assert "journal.db (sealed row)" in seen.stdout

    # with the key: every customer back, the waiting webhooks delivered
    monkeypatch.setenv("NUDGE_DATA_KEY", key)
    server, got = _receiver(hook_port)
    proc = start_nudge_run(data, port, down, tokens=(WRITE, ADMIN), log=log)
    try:
        wait_ready(port, proc, log)
        for who, (mail, phone) in PEOPLE.items():
            status, view = request("GET", port, f"/v1/customers/{who}")
            assert status == 200, who
            assert view["profile"]["attributes"]["email"] == mail
            assert view["profile"]["attributes"]["phone"] == phone
        # every action pending at the kill delivered (emails to the file, webhooks to
        # the receiver: which of them were pending then is sealed, so count them all)
        until(lambda: _pending(data) == 0, f"the {pending} waiting actions delivered")
        # the export opens the sealed journal and outbox rows
        status, doc = request("GET", port, "/v1/customers/rest-c/export")
        assert status == 200
        assert PEOPLE["rest-c"][0] in orjson.dumps(doc).decode()
        assert any(e["event"]["customer_id"] == "rest-c" for e in doc["events"])
        assert request("GET", port, "/v1/customers/rest-a", token=WRONG)[0] == 401
        assert {a["customer_id"] for a in got} >= set(LATER)
        # the erase works on sealed rows: the customer is gone, the others keep theirs
        done = nudge("erase", "rest-d", "--url", f"http://127.0.0.1:{port}", "--verify",
                     "--data", str(data), env={"NUDGE_DATA_KEY": key})  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert orjson.loads(done.stdout.splitlines()[0])["erased"]["journal_entries"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        server.shutdown()
        server.server_close()
    assert _hits(data) == []
    # no token and no key in anything the engine or the CLI printed
    printed = log.read_text() + done.stdout + done.stderr + seen.stdout + seen.stderr
    assert printed.count('"listening"') == 3  # the log of the three runs that served
    for secret in (WRITE, ADMIN, WRONG, key):
        assert secret not in printed
