"""Actions that could not be delivered, kept in SQLite until replayed or removed.

Each letter has a ``reason``: ``rejected`` (the receiver refused it: a 4xx other than
408/409/425/429), ``horizon`` (retried for the sink's whole retry horizon), ``attempts``
(the sink's optional attempt cap), ``expired`` (its send-by deadline passed: not sent on
purpose), or ``failed`` (letters written before reasons existed).

Replay: without an engine on the data directory, :meth:`DeadLetterStore.replay` delivers
letters itself. With one running, ``nudge deadletter replay`` only marks them
(:meth:`request_replay`); the engine takes them (:meth:`take_replays`) back into its
outbox, so its breakers, per-customer order and gauges see the replay.
"""

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

__all__ = ["BodySealer", "DeadLetter", "DeadLetterStore", "NowMs"]

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
# added later: ALTER TABLE on an older file (SQLite has no ADD COLUMN IF NOT EXISTS)
_ADDED = {
    "reason": "ALTER TABLE dead_letters ADD COLUMN reason TEXT NOT NULL DEFAULT 'failed'",
    "replay": "ALTER TABLE dead_letters ADD COLUMN replay INTEGER NOT NULL DEFAULT 0",
}
_COLUMNS = "key, sink, action, error, attempts, failed_at, reason"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Action).decode


class BodySealer(Protocol):
    """Encryption at rest (the embedded runtime's engine/embedded/storage/crypt.py
    ``Sealer``): a letter's action and error are sealed on the way in, opened on the way
    out."""

    def seal(self, body: bytes) -> bytes: ...

    def open(self, body: bytes) -> bytes: ...


class NowMs(Protocol):
    """The wall clock of the store, in epoch milliseconds (injected in tests)."""

    def __call__(self) -> Millis: ...


def _wall_ms() -> Millis:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class DeadLetter:
    """One undeliverable action: the sink it was meant for, the last error, how many
    attempts were made in total, when it last failed (epoch ms) and why it was given up
    (``reason``: module docstring)."""

    key: str
    sink_name: str
    action: Action
    error: str
    attempts: int
    failed_at: Millis
    reason: str = "failed"


class DeadLetterStore:
    """Dead letters in a SQLite file (WAL mode), one row per idempotency key.

    Adding a key that is already there keeps one row, replacing sink, error, attempts and
    time. Methods are synchronous and thread-safe (one connection behind a lock, usable from
    any thread: the runtime calls them from its DB executor); :meth:`replay` is the async
    exception, and runs its short SQLite calls on the event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        now: NowMs = _wall_ms,
        sealer: BodySealer | None = None,
    ) -> None:
        self.path = Path(path)
        self._now = now
        self._sealer = sealer
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA secure_delete=ON")  # an erased customer's letters are gone
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(dead_letters)")}
            for column, ddl in _ADDED.items():
                if column not in have:
                    db.execute(ddl)
        except BaseException:
            db.close()
            raise
        return db

    def erase_customer(self, customer_id: str) -> int:
        """Delete every letter of ``customer_id``'s actions (erasure) and truncate the WAL;
        returns how many."""
        with self._lock:
            keys = []
            for key, action in self._db.execute("SELECT key, action FROM dead_letters"):
                try:
                    if _decode(self._opened(action)).customer_id == customer_id:
                        keys.append(key)
                except msgspec.MsgspecError:
                    continue
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                self._db.execute(
                    f"DELETE FROM dead_letters WHERE key IN ({','.join('?' * len(part))})", part
                )
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(keys)

    def reopen(self) -> None:
        """Close the database and open it again: after :meth:`close`, or to replace a
        connection an I/O error left unusable. Rows already committed are all there."""
        with self._lock:
            self._db.close()
            self._db = self._open()

    def add(
        self,
        action: Action,
        sink_name: str,
        error: str,
        attempts: int,
        reason: str = "failed",
    ) -> None:
        """Record ``action`` as undeliverable to ``sink_name`` for ``reason`` (insert or
        update by key; an update clears a pending replay request)."""
        with self._lock:
            self._db.execute(
                f"INSERT INTO dead_letters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET sink = excluded.sink, action = excluded.action,"
                " error = excluded.error, attempts = excluded.attempts,"
                " failed_at = excluded.failed_at, reason = excluded.reason, replay = 0",
                (
                    action.idempotency_key,
                    sink_name,
                    self._sealed(_encode(action)),
                    error if self._sealer is None else self._sealer.seal(error.encode()),
                    attempts,
                    self._now(),
                    reason,
                ),
            )

    def list(self, limit: int = 100, *, sink_name: str | None = None) -> builtins.list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest failure first (optionally one sink's)."""
        return self._select(limit, sink_name, after=None, by_key=False)

    def count(self) -> int:
        """How many dead letters there are."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """How many dead letters there are, by reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, count(*) FROM dead_letters GROUP BY reason"
            ).fetchall()
        return {str(r): int(n) for r, n in rows}

    def request_replay(self, *, sink_name: str | None = None, expired: bool = False) -> int:
        """Mark letters for a running engine to replay (:meth:`take_replays`); returns
        how many. Expired letters only with ``expired`` (they were not sent on purpose)."""
        sql = "UPDATE dead_letters SET replay = 1 WHERE replay = 0"
        args: builtins.list[str] = []
        if sink_name is not None:
            sql += " AND sink = ?"
            args.append(sink_name)
        if not expired:
            sql += " AND reason != 'expired'"
        with self._lock:
            cur = self._db.execute(sql, args)
        return cur.rowcount

    def replay_requested(self) -> int:
        """How many letters wait for a running engine to take them."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM dead_letters WHERE replay = 1").fetchone()
        return int(row[0])

    def take_replays(self, limit: int = 500) -> builtins.list[DeadLetter]:
        """Up to ``limit`` letters marked by :meth:`request_replay`, in key order. They
        stay in the store until the caller removes them (:meth:`remove_many`), after it
        made them durable elsewhere."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE replay = 1 ORDER BY key LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._letter(*row) for row in rows]

    def remove_many(self, keys: builtins.list[str]) -> int:
        """Delete the dead letters with these keys; returns how many there were."""
        removed = 0
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                cur = self._db.execute(f"DELETE FROM dead_letters WHERE key IN ({marks})", chunk)
                removed += cur.rowcount
        return removed

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
        expired: bool = False,
        sleep: Sleep = asyncio.sleep,
        batch: int = 100,
    ) -> tuple[int, int]:
        """Re-deliver dead letters to ``sink`` with :func:`~connectors.retry.deliver`, one at
        a time, in key order; return ``(delivered, failed)``.

        Only the letters recorded for ``sink.name`` are replayed, unless ``all_sinks``;
        expired letters only with ``expired``. There is no send-by deadline on a replay,
        and the retry horizon runs from the letter's replay. A delivered letter is
        removed; a failed one stays, with the new error and reason, and attempts added to
        its count. Letters added while the replay runs may or may not be included.
        The sink must be started.
        """
        delivered = failed = 0
        after: str | None = None
        sink_name = None if all_sinks else sink.name
        while letters := self._select(batch, sink_name, after=after, by_key=True):
            for letter in letters:
                after = letter.key
                if letter.reason == "expired" and not expired:
                    continue
                try:
                    await deliver(sink, letter.action, policy, sleep)
                except SinkError as err:
                    failed += 1
                    self.add(
                        letter.action,
                        sink.name,
                        str(err),
                        letter.attempts + err.attempts,
                        err.reason or "rejected",
                    )
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
        return [self._letter(*row) for row in rows]

    def _sealed(self, body: bytes) -> bytes:
        return body if self._sealer is None else self._sealer.seal(body)

    def _opened(self, body: bytes) -> bytes:
        return body if self._sealer is None else self._sealer.open(body)

    def _letter(
        self,
        key: str,
        sink: str,
        blob: bytes,
        error: str | bytes,
        attempts: int,
        failed_at: int,
        reason: str,
    ) -> DeadLetter:
        if isinstance(error, bytes):  # sealed
            error = self._opened(error).decode()
        action = _decode(self._opened(blob))
        return DeadLetter(key, sink, action, error, attempts, failed_at, reason)
