"""The embedded runtime's suppression list (state/suppression.py explains it): salted
hashes of suppressed ids and their salt in ``suppressed.db`` (SQLite, ``secure_delete``),
loaded into memory at start (16 bytes an id).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from state.suppression import digest

__all__ = ["Suppression"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS salt (salt BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS suppressed (digest BLOB PRIMARY KEY, at INTEGER NOT NULL)
    WITHOUT ROWID;
"""


class Suppression:
    """The suppressed ids of one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT salt FROM salt").fetchone()
        if row is None:
            salt = os.urandom(16)
            db.execute("INSERT INTO salt (salt) VALUES (?)", (salt,))
        else:
            salt = bytes(row[0])
        self._salt = salt
        self._db = db
        self._digests = {bytes(d) for (d,) in db.execute("SELECT digest FROM suppressed")}

    def __len__(self) -> int:
        return len(self._digests)

    def digest(self, customer_id: str) -> bytes:
        return digest(self._salt, customer_id)

    def add(self, customer_id: str, at: int) -> None:
        """Suppress ``customer_id`` from now on (durable when this returns)."""
        d = self.digest(customer_id)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO suppressed (digest, at) VALUES (?, ?)", (d, at))
        self._digests.add(d)

    def __contains__(self, customer_id: str) -> bool:
        return bool(self._digests) and self.digest(customer_id) in self._digests

    def close(self) -> None:
        with self._lock:
            self._db.close()
