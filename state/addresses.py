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

Backends: :class:`MemoryAddressBook` (tests, default), ``SqliteAddressBook``
(engine/embedded/storage/addresses.py: a file in the data directory), ``RedisAddressBook``
(engine/distributed/storage/addresses.py: one hash ``nudge:addresses:<channel>`` per
channel, shared by every ingest process).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from engine.types import Event

if TYPE_CHECKING:
    pass

__all__ = [
    "ADDRESS_EVENT_TYPES",
    "AddressBook",
    "MemoryAddressBook",
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
