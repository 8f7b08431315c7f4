"""Customers erased with suppression (``DELETE /v1/customers/{id}?suppress=true``): their
later events are dropped at the edge and counted, and the id itself is not kept.

The list holds salted hashes (BLAKE2b-128 of a random 16-byte salt and the id): a copied
data directory does not tell which ids were erased, though a known id can still be
checked against it, which is what the list is for. The salt is created with the list and
kept beside it; both live in ``suppressed.db`` (SQLite, ``secure_delete``), loaded into
memory at start (16 bytes an id). Hashing costs an event nothing while the list is empty.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["Suppression", "digest"]


def digest(salt: bytes, customer_id: str) -> bytes:
    """The suppression list's key for ``customer_id``: BLAKE2b-128 keyed by ``salt``."""
    return hashlib.blake2b(customer_id.encode(), digest_size=16, key=salt).digest()


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
