"""The embedded runtime's durable store: standard-library SQLite in WAL mode.

Tables: ``journal`` (accepted events, in acceptance order), ``states`` (customer state
checkpoints), ``meta`` (checkpoint positions), ``outbox`` (actions by idempotency key, so a
replay never queues one twice) and ``rules`` (deployed rule set versions).

All methods are blocking and must be called from one thread (the runtime gives this store
a dedicated single-thread executor). ``synchronous=FULL`` makes a commit durable against
power loss, not only against a process crash; ``NORMAL`` trades that for speed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from state.customer import CustomerState

__all__ = ["JournalEntry", "OutboxEntry", "SqliteStore"]

JournalEntry = tuple[int, int, str, bytes]  # seq, accepted_at ms, customer_id, raw event
OutboxEntry = tuple[str, bytes, int]  # idempotency key, action JSON, accepted_at of cause

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    accepted_at INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_customer ON journal (customer_id);
CREATE TABLE IF NOT EXISTS states (customer_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    body BLOB NOT NULL,
    cause_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status);
CREATE TABLE IF NOT EXISTS rules (
    version INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    files BLOB NOT NULL
);
"""


class SqliteStore:
    """Journal, checkpoints, outbox and rule versions in one SQLite file."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- journal -------------------------------------------------------------------
    def append(self, accepted_at: int, events: list[tuple[str, bytes]]) -> int:
        """Append (customer_id, raw) events in one transaction; returns the first seq."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()
            first = int(row[0]) + 1
            db.executemany(
                "INSERT INTO journal (seq, accepted_at, customer_id, body) VALUES (?, ?, ?, ?)",
                ((first + i, accepted_at, cid, raw) for i, (cid, raw) in enumerate(events)),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return first

    def journal_after(self, seq: int, batch: int = 10_000) -> Iterator[JournalEntry]:
        """Journal entries with seq > ``seq`` in order."""
        while True:
            rows = self.db.execute(
                "SELECT seq, accepted_at, customer_id, body FROM journal WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (seq, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield int(r[0]), int(r[1]), str(r[2]), bytes(r[3])
            seq = int(rows[-1][0])

    # --- checkpoints ---------------------------------------------------------------
    def checkpoint(
        self,
        states: list[tuple[str, bytes]],
        deleted: Iterable[str],
        seqs: dict[int, int],
        outbox: list[tuple[str, str, bytes, int]],
        trim_before: int | None = None,
    ) -> None:
        """Atomically write serialized states, erasures, each partition's journal position
        and the actions produced up to that position (so none is lost between the two)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self.outbox_add(outbox)
            db.executemany(
                "INSERT OR REPLACE INTO states (customer_id, body) VALUES (?, ?)", states
            )
            db.executemany("DELETE FROM states WHERE customer_id = ?", ((cid,) for cid in deleted))
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                ((f"checkpoint_seq:{p}", str(s)) for p, s in seqs.items()),
            )
            if trim_before is not None and seqs:
                db.execute(
                    "DELETE FROM journal WHERE seq <= ? AND accepted_at < ?",
                    (min(seqs.values()), trim_before),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def checkpoint_seqs(self) -> dict[int, int]:
        rows = self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint_seq:%'")
        return {int(k.split(":")[1]): int(v) for k, v in rows}

    def load_states(self) -> Iterator[CustomerState]:
        for (body,) in self.db.execute("SELECT body FROM states"):
            yield CustomerState.from_dict(orjson.loads(body))

    # --- outbox --------------------------------------------------------------------
    def outbox_add(self, entries: list[tuple[str, str, bytes, int]]) -> None:
        """Queue (key, customer_id, action JSON, cause_at); a key already present is kept."""
        self.db.executemany(
            "INSERT OR IGNORE INTO outbox (key, customer_id, body, cause_at) VALUES (?, ?, ?, ?)",
            entries,
        )

    def outbox_mark(self, keys: list[str], status: str) -> None:
        self.db.executemany(
            "UPDATE outbox SET status = ? WHERE key = ?", ((status, k) for k in keys)
        )

    def outbox_pending_keys(self, keys: list[str]) -> list[str]:
        """Which of ``keys`` are still pending."""
        out: list[str] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT key FROM outbox WHERE status = 'pending' AND key IN ({marks})", chunk
            )
            out += [str(k) for (k,) in rows]
        return out

    def outbox_pending(self) -> list[OutboxEntry]:
        rows = self.db.execute(
            "SELECT key, body, cause_at FROM outbox WHERE status = 'pending' ORDER BY rowid"
        )
        return [(str(k), bytes(b), int(c)) for k, b, c in rows]

    def outbox_count(self, status: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM outbox WHERE status = ?", (status,)).fetchone()
        return int(row[0])

    # --- customers -----------------------------------------------------------------
    def erase_customer(self, customer_id: str) -> dict[str, int]:
        """Delete everything stored about a customer; returns counts per table."""
        db = self.db
        out = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("journal", "states", "outbox"):
                cur = db.execute(f"DELETE FROM {table} WHERE customer_id = ?", (customer_id,))
                out[table] = cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    # --- rules ---------------------------------------------------------------------
    def save_rules(self, created_at: int, files: dict[str, str]) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(version), 0) FROM rules").fetchone()
        version = int(row[0]) + 1
        self.db.execute(
            "INSERT INTO rules (version, created_at, files) VALUES (?, ?, ?)",
            (version, created_at, orjson.dumps(files)),
        )
        return version

    def latest_rules(self) -> tuple[int, dict[str, str]] | None:
        row = self.db.execute(
            "SELECT version, files FROM rules ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        files: dict[str, Any] = orjson.loads(row[1])
        return int(row[0]), {str(k): str(v) for k, v in files.items()}

    def rule_versions(self) -> list[tuple[int, int]]:
        rows = self.db.execute("SELECT version, created_at FROM rules ORDER BY version")
        return [(int(v), int(c)) for v, c in rows]
