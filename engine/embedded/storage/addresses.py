"""The embedded runtime's address book (state/addresses.py): a SQLite file in the data
directory. With encryption at rest (engine/embedded/storage/crypt.py) an address is stored
as its keyed hash (HMAC-SHA256): a lookup hashes the address it is given the same way, and
the file never holds the address itself."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.embedded.storage.crypt import Sealer

__all__ = ["SqliteAddressBook"]

logger = logging.getLogger(__name__)


class SqliteAddressBook:
    """A table ``addresses(channel, address, customer_id)`` in its own SQLite file (WAL,
    ``synchronous=NORMAL``: an address lost in a power cut is recorded again by the
    customer's next profile event). Calls run on one dedicated thread, so the event loop
    never waits on the file and the connection is used by a single thread."""

    def __init__(self, path: Path, sealer: Sealer | None = None) -> None:
        self.path = path
        self._sealer = sealer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="addresses")
        self._db: sqlite3.Connection | None = None
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA secure_delete=ON")  # an erased customer's addresses are gone
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS addresses (channel TEXT NOT NULL, address TEXT NOT"
            " NULL, customer_id TEXT NOT NULL, PRIMARY KEY (channel, address)) WITHOUT ROWID"
        )
        # which key hashed the stored addresses ('' none): rows of another one (plaintext
        # before the key was set, or a rotated key's hashes) would never match a lookup, and
        # plaintext ones must not stay; they go, and each customer's next profile event
        # records its address again
        db.execute("CREATE TABLE IF NOT EXISTS hashed (key_id TEXT NOT NULL)")
        row = db.execute("SELECT key_id FROM hashed").fetchone()
        now = "" if self._sealer is None else self._sealer.key_name
        if (row[0] if row else "") != now:
            db.execute("DELETE FROM addresses")
            db.execute("DELETE FROM hashed")
            db.execute("INSERT INTO hashed (key_id) VALUES (?)", (now,))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db = db

    def _address(self, address: str) -> str:
        return address if self._sealer is None else self._sealer.mac(address)

    async def _call(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        def run() -> list[Any]:
            assert self._db is not None, "address book is closed"
            return self._db.execute(sql, args).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def record(self, channel: str, address: str, customer_id: str) -> None:
        await self._call(
            "INSERT INTO addresses (channel, address, customer_id) VALUES (?, ?, ?)"
            " ON CONFLICT (channel, address) DO UPDATE SET customer_id = excluded.customer_id",
            (channel, self._address(address), customer_id),
        )

    async def lookup(self, channel: str, address: str) -> str | None:
        rows = await self._call(
            "SELECT customer_id FROM addresses WHERE channel = ? AND address = ?",
            (channel, self._address(address)),
        )
        return str(rows[0][0]) if rows else None

    async def erase(self, customer_id: str) -> int:
        def run() -> int:
            assert self._db is not None, "address book is closed"
            n = self._db.execute(
                "DELETE FROM addresses WHERE customer_id = ?", (customer_id,)
            ).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return int(n)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def close(self) -> None:
        """Close the file and stop the thread (calls after this fail)."""

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        self._executor.submit(shut).result()
        self._executor.shutdown(wait=True)
