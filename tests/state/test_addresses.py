"""The address book: every backend records, replaces and looks up; record_addresses picks
the email and phone of profile events only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.distributed.storage.addresses import RedisAddressBook
from engine.embedded.storage.addresses import SqliteAddressBook
from engine.types import Event
from state.addresses import (
    AddressBook,
    MemoryAddressBook,
    normalize,
    record_addresses,
)
from tests.support.servers import RedisServer

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _event(cid: str, etype: str, props: dict[str, Any]) -> Event:
    return Event(
        event_id=f"e-{cid}-{etype}", type=etype, customer_id=cid, timestamp=T0, properties=props
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def book(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AddressBook]:
    if request.param == "memory":
        yield MemoryAddressBook()
    elif request.param == "sqlite":
        b = SqliteAddressBook(tmp_path / "addresses.db")
        try:
            yield b
        finally:
            b.close()
    else:
        import redis.asyncio as aioredis

        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis.from_url(server.url)
        await client.flushall()
        try:
            yield RedisAddressBook(client)
        finally:
            await client.aclose()


async def test_record_lookup_replace(book: AddressBook) -> None:
    assert await book.lookup("sms", "+14155550100") is None
    await book.record("sms", "+14155550100", "c1")
    await book.record("email", "a@example.com", "c2")
    assert await book.lookup("sms", "+14155550100") == "c1"
    assert await book.lookup("email", "a@example.com") == "c2"
    assert await book.lookup("email", "+14155550100") is None  # channels are apart
    await book.record("sms", "+14155550100", "c3")  # the last to record it owns it
    assert await book.lookup("sms", "+14155550100") == "c3"


async def test_record_addresses_from_profile_events(book: AddressBook) -> None:
    events = [
        _event(
            "c1",
            "customer_updated",
            {"attributes": {"email": " Ann@Example.COM ", "phone": "+1 (415) 555-0100"}},
        ),
        _event("c2", "customer_signed_up", {"attributes": {"phone": "+33 6 12 34 56 78"}}),
        _event("c3", "order_completed", {"attributes": {"phone": "+15550000000"}}),
        _event("c4", "customer_updated", {"attributes": {"phone": 4155550100}}),
        _event("c5", "customer_updated", {"consent": {"sms": True}}),
    ]
    assert await record_addresses(book, events) == 3
    assert await book.lookup("email", "ann@example.com") == "c1"
    assert await book.lookup("sms", "+14155550100") == "c1"
    assert await book.lookup("sms", "+33612345678") == "c2"
    assert await book.lookup("sms", "+15550000000") is None


def test_normalize() -> None:
    assert normalize("sms", " +44 20.7946-0958 ") == "+442079460958"
    assert normalize("email", "X@Y.Org") == "x@y.org"
    assert normalize("shopify_order", " 123 ") == "123"


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    b = SqliteAddressBook(tmp_path / "addresses.db")
    await b.record("sms", "+14155550100", "c1")
    b.close()
    b = SqliteAddressBook(tmp_path / "addresses.db")
    try:
        assert await b.lookup("sms", "+14155550100") == "c1"
    finally:
        b.close()
