"""Actions that could not be delivered, kept in SQLite until replayed or removed."""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from connectors.exceptions import SinkError
from connectors.retry import RetryPolicy, Sleep, deliver
from connectors.sinks.base import Sink
from engine.types import Action, Millis

__all__ = ["DeadLetter", "DeadLetterStore", "NowMs"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    key       TEXT PRIMARY KEY,
    sink      TEXT NOT NULL,
    action    BLOB NOT NULL,
    error     TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    failed_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (failed_at, key);
"""
_COLUMNS = "key, sink, action, error, attempts, failed_at"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Action).decode


class NowMs(Protocol):
    """The wall clock of the store, in epoch milliseconds (injected in tests)."""

    def __call__(self) -> Millis: ...


def _wall_ms() -> Millis:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class DeadLetter:
    """One undeliverable action: the sink it was meant for, the last error, how many
    attempts were made in total, and when it last failed (epoch ms)."""

    key: str
    sink_name: str
    action: Action
    error: str
    attempts: int
    failed_at: Millis


class DeadLetterStore:
    """Dead letters in a SQLite file (WAL mode), one row per idempotency key.

    Adding a key that is already there keeps one row, replacing sink, error, attempts and
    time. Methods are synchronous and thread-safe (one connection behind a lock, usable from
    any thread: the runtime calls them from its DB executor); :meth:`replay` is the async
    exception, and runs its short SQLite calls on the event loop.
    """

    def __init__(self, path: str | os.PathLike[str], *, now: NowMs = _wall_ms) -> None:
        self.path = Path(path)
        self._now = now
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def reopen(self) -> None:
        """Close the database and open it again: after :meth:`close`, or to replace a
        connection an I/O error left unusable. Rows already committed are all there."""
        with self._lock:
            self._db.close()
            self._db = self._open()

    def add(self, action: Action, sink_name: str, error: str, attempts: int) -> None:
        """Record ``action`` as undeliverable to ``sink_name`` (insert or update by key)."""
        with self._lock:
            self._db.execute(
                f"INSERT INTO dead_letters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET sink = excluded.sink, action = excluded.action,"
                " error = excluded.error, attempts = excluded.attempts,"
                " failed_at = excluded.failed_at",
                (action.idempotency_key, sink_name, _encode(action), error, attempts, self._now()),
            )

    def list(self, limit: int = 100, *, sink_name: str | None = None) -> builtins.list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest failure first (optionally one sink's)."""
        return self._select(limit, sink_name, after=None, by_key=False)

    def count(self) -> int:
        """How many dead letters there are."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()
        return int(row[0])

    def remove(self, key: str) -> bool:
        """Delete the dead letter with idempotency key ``key``; ``False`` if there was none."""
        with self._lock:
            cur = self._db.execute("DELETE FROM dead_letters WHERE key = ?", (key,))
        return cur.rowcount > 0

    def close(self) -> None:
        """Close the database. The store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    async def replay(
        self,
        sink: Sink,
        policy: RetryPolicy,
        *,
        all_sinks: bool = False,
        sleep: Sleep = asyncio.sleep,
        batch: int = 100,
    ) -> tuple[int, int]:
        """Re-deliver dead letters to ``sink`` with :func:`~connectors.retry.deliver`, one at
        a time, in key order; return ``(delivered, failed)``.

        Only the letters recorded for ``sink.name`` are replayed, unless ``all_sinks``. A
        delivered letter is removed; a failed one stays, with the new error and attempts
        added to its count. Letters added while the replay runs may or may not be included.
        The sink must be started.
        """
        delivered = failed = 0
        after: str | None = None
        sink_name = None if all_sinks else sink.name
        while letters := self._select(batch, sink_name, after=after, by_key=True):
            for letter in letters:
                after = letter.key
                try:
                    await deliver(sink, letter.action, policy, sleep)
                except SinkError as err:
                    failed += 1
                    self.add(letter.action, sink.name, str(err), letter.attempts + err.attempts)
                    logger.info("replay of %s to %s failed: %s", letter.key, sink.name, err)
                else:
                    delivered += 1
                    self.remove(letter.key)
        logger.info("replayed to %s: %d delivered, %d failed", sink.name, delivered, failed)
        return delivered, failed

    def _select(
        self, limit: int, sink_name: str | None, *, after: str | None, by_key: bool
    ) -> builtins.list[DeadLetter]:
        where, args = [], []
        if sink_name is not None:
            where.append("sink = ?")
            args.append(sink_name)
        if after is not None:  # replay pages by key: updating a row does not move it
            where.append("key > ?")
            args.append(after)
        order = "key" if by_key else "failed_at, key"
        sql = f"SELECT {_COLUMNS} FROM dead_letters"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(f"{sql} ORDER BY {order} LIMIT ?", (*args, limit)).fetchall()
        return [
            DeadLetter(
                key=key,
                sink_name=sink,
                action=_decode(blob),
                error=error,
                attempts=attempts,
                failed_at=failed_at,
            )
            for key, sink, blob, error, attempts, failed_at in rows
        ]
