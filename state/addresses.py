"""The address book: which customer an address (a phone number, an email address, a
Shopify order id) belongs to, for provider callbacks that name only the address.

Twilio's inbound messages carry the sender's phone number, not a customer id; Shopify's
refund webhooks carry the order id, not the customer. The HTTP layer records every
address it sees (:func:`record_addresses`: ``attributes.email`` / ``attributes.phone`` of
``customer_signed_up`` and ``customer_updated`` events from any source) and looks them up
when such a callback arrives.

Channels used: ``email`` (lower-cased), ``sms`` (digits with a leading ``+``, see
:func:`normalize`), ``shopify_order`` (the order id). The last customer to record an
address owns it. Lookups are best effort: an address recorded by a request whose events
were then refused (backpressure) stays recorded, which is harmless (it names the customer
that claimed it).

Backends: :class:`MemoryAddressBook` (tests, default), :class:`SqliteAddressBook`
(embedded runtime: a file in the data directory), :class:`RedisAddressBook` (distributed
ingest: one hash ``nudge:addresses:<channel>`` per channel, shared by every ingest
process).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.types import Event

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "ADDRESS_EVENT_TYPES",
    "AddressBook",
    "MemoryAddressBook",
    "RedisAddressBook",
    "SqliteAddressBook",
    "normalize",
    "record_addresses",
]

logger = logging.getLogger(__name__)

ADDRESS_EVENT_TYPES = frozenset({"customer_signed_up", "customer_updated"})
"""Event types whose ``attributes.email`` / ``attributes.phone`` are recorded."""
_ATTRIBUTE_CHANNELS = (("email", "email"), ("phone", "sms"))
_PHONE_NOISE = re.compile(r"[\s().\-/]")
_MAX_ADDRESS = 320  # an email address is at most 254 octets; leave room


class AddressBook(Protocol):
    """Address -> customer id, per channel. Both calls may be made concurrently from the
    event loop; a backend does its I/O without blocking the loop for long."""

    async def record(self, channel: str, address: str, customer_id: str) -> None:
        """Remember that ``address`` (normalized by the caller) belongs to
        ``customer_id``, replacing any earlier owner."""
        ...

    async def lookup(self, channel: str, address: str) -> str | None:
        """The customer that last recorded ``address``, or None."""
        ...

    async def erase(self, customer_id: str) -> int:
        """Forget every address of ``customer_id`` (erasure); returns how many."""
        ...


def normalize(channel: str, address: str) -> str:
    """The form addresses are stored and looked up in: emails stripped and lower-cased;
    phone numbers without spaces, dashes, dots, slashes and parentheses (``+1 (415)
    555-0100`` -> ``+14155550100``; Twilio sends E.164, so profiles should hold E.164
    numbers: no country code is guessed). Other channels: stripped."""
    address = address.strip()
    if channel == "email":
        return address.lower()
    if channel == "sms":
        return _PHONE_NOISE.sub("", address)
    return address


async def record_addresses(book: AddressBook, events: Iterable[Event]) -> int:
    """Record the email address and phone number of each ``customer_signed_up`` /
    ``customer_updated`` event (``properties.attributes.email`` / ``.phone``, strings) for
    its customer; returns how many were recorded. Call it for accepted events of every
    source (native ``/v1/events`` included) so a reply from a phone finds its customer."""
    n = 0
    for ev in events:
        if ev.type not in ADDRESS_EVENT_TYPES:
            continue
        attributes = ev.properties.get("attributes")
        if not isinstance(attributes, dict):
            continue
        for attribute, channel in _ATTRIBUTE_CHANNELS:
            value = attributes.get(attribute)
            if not isinstance(value, str):
                continue
            address = normalize(channel, value)
            if address and len(address) <= _MAX_ADDRESS:
                await book.record(channel, address, ev.customer_id)
                n += 1
    return n


class MemoryAddressBook:
    """A dict per channel; lost on restart. For tests and as the HTTP layer's default."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], str] = {}

    async def record(self, channel: str, address: str, customer_id: str) -> None:
        self._data[(channel, address)] = customer_id

    async def lookup(self, channel: str, address: str) -> str | None:
        return self._data.get((channel, address))

    async def erase(self, customer_id: str) -> int:
        gone = [k for k, v in self._data.items() if v == customer_id]
        for k in gone:
            del self._data[k]
        return len(gone)

    def __len__(self) -> int:
        return len(self._data)


class SqliteAddressBook:
    """A table ``addresses(channel, address, customer_id)`` in its own SQLite file (WAL,
    ``synchronous=NORMAL``: an address lost in a power cut is recorded again by the
    customer's next profile event). Calls run on one dedicated thread, so the event loop
    never waits on the file and the connection is used by a single thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        self._db = db

    async def _call(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        def run() -> list[Any]:
            assert self._db is not None, "address book is closed"
            return self._db.execute(sql, args).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def record(self, channel: str, address: str, customer_id: str) -> None:
        await self._call(
            "INSERT INTO addresses (channel, address, customer_id) VALUES (?, ?, ?)"
            " ON CONFLICT (channel, address) DO UPDATE SET customer_id = excluded.customer_id",
            (channel, address, customer_id),
        )

    async def lookup(self, channel: str, address: str) -> str | None:
        rows = await self._call(
            "SELECT customer_id FROM addresses WHERE channel = ? AND address = ?",
            (channel, address),
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


class RedisAddressBook:
    """One Redis hash per channel, ``<prefix>:<channel>`` (default
    ``nudge:addresses:sms``): field = address, value = customer id. Shared by every
    ingest process of the distributed runtime. Redis errors propagate (the request then
    answers 500 and the provider retries)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "nudge:addresses") -> None:
        self._redis = client
        self._prefix = prefix

    async def record(self, channel: str, address: str, customer_id: str) -> None:
        await self._redis.hset(f"{self._prefix}:{channel}", address, customer_id)

    async def lookup(self, channel: str, address: str) -> str | None:
        got = await self._redis.hget(f"{self._prefix}:{channel}", address)
        if got is None:
            return None
        return got.decode() if isinstance(got, bytes) else str(got)

    async def erase(self, customer_id: str) -> int:
        """Every channel's hash scanned (erasure is rare): fields naming the customer go."""
        n = 0
        want = customer_id.encode()
        async for key in self._redis.scan_iter(match=f"{self._prefix}:*"):
            fields = [f for f, v in (await self._redis.hgetall(key)).items() if v == want]
            if fields:
                n += int(await self._redis.hdel(key, *fields))
        return n
