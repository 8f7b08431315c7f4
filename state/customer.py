"""The per-customer state record and the flow instance record.

Both are msgspec Structs (``gc=False``: no reference cycles, no GC header; ``array_like``:
rows are positional) with ``None`` for empty parts: most customers never open a flow or
hold a cart, and the memory budget is about 1 KB per customer. Structs encode and decode
in one C call, so idle customers are kept as packed bytes (``pack``/``unpack``, MessagePack)
and inflated on their next input. Checkpoints and changelog rows are the same packed
bytes; JSON rows (``to_row``/``from_row``) written by earlier versions still load
(``load``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from state.fingerprints import holds

__all__ = [
    "CONSENT_HISTORY_MAX",
    "DEDUP_WINDOW",
    "SEGMENT_TIMER",
    "VIEWED_MAX",
    "CustomerState",
    "FlowInstance",
    "load",
    "pack",
    "unpack",
]

DEDUP_WINDOW = 32
"""Event ids always remembered per customer for duplicate detection (as 64-bit
fingerprints), however old; younger ones are kept for the dedup horizon whatever their
number (``CustomerState.remember``)."""
SEGMENT_TIMER = "~segments"
"""The timer id (in place of a rule id) that re-evaluates a customer's segments; no rule id
can take it (rule ids start with a letter)."""
VIEWED_MAX = 5
"""Recently viewed products kept per customer, most recent last."""
CONSENT_HISTORY_MAX = 20
"""Consent changes kept per customer (``CustomerState.consent_history``), the latest."""


class FlowInstance(msgspec.Struct, array_like=True, gc=False):
    """One open run of a rule for a customer. ``pc`` indexes the compiled rule's op list;
    ``due`` is the pending timer (None: no timer). ``seen`` maps event type to the last
    event time seen since the flow started (only the types the rule asks about);
    ``marks`` maps step names to when they ran."""

    rule_id: str
    version: int
    instance_id: str
    started_at: int
    variant: str
    trigger: dict[str, Any] | None
    pc: int = 0
    due: int | None = None
    # created on first use: most instances wait without seeing anything
    seen: dict[str, int] | None = None
    marks: dict[str, int] | None = None


class CustomerState(msgspec.Struct, array_like=True, gc=False):
    """Everything Nudge knows about one customer. Create with ``CustomerState(id, t, t)``
    (first and last seen)."""

    customer_id: str
    first_seen: int
    last_seen: int
    seq: int = 0  # last journal entry applied (runtimes), so replays skip what is in
    timezone: str | None = None
    consent: dict[str, bool] | None = None
    attributes: dict[str, Any] | None = None
    orders: int = 0
    revenue: float = 0.0
    first_order: int | None = None
    last_order: int | None = None
    # product_id -> [quantity, unit price]
    cart: dict[str, list[float]] | None = None
    cart_updated: int | None = None
    viewed: list[str] | None = None
    counters: dict[int, int] | None = None
    # the last DEDUP_WINDOW event id fingerprints, 8 bytes each, little-endian
    dedup: bytearray | None = None
    flows: dict[str, FlowInstance] | None = None
    # rule_id -> last time a flow of that rule was entered
    entries: dict[str, int] | None = None
    # recent sends for frequency caps: (time, rule_id, channel)
    sends: list[tuple[int, str, str]] | None = None
    # open experiment goal windows: (rule_id, variant, goal event type, start, deadline)
    goals: list[tuple[str, str, str, int, int]] | None = None
    # identity: the known customer this (anonymous) id was merged into; its later
    # events are forwarded there
    merged_into: str | None = None
    # ids merged into this customer (a merge arriving twice is applied once)
    merged_from: list[str] | None = None
    # profile attribute -> the address a hard bounce / permanent failure marked undeliverable
    undeliverable: dict[str, str] | None = None
    # segments: id -> when the customer entered (members only), id -> when it last left,
    # and when a segment can next change with no event (a counted bucket leaving a window)
    segments: dict[str, int] | None = None
    segments_left: dict[str, int] | None = None
    segments_due: int | None = None
    # the rule set's segments digest (``RuleSet.segments_digest``) the customer's segments
    # were last all evaluated under: a different one means a segment was added, changed or
    # removed since, and the runtime backfills it (engine/embedded/segment_backfill.py).
    # Appended last: rows of earlier layouts load with None.
    segments_digest: str | None = None
    # when a segment reading customer.predicted next turns with the state as it stands
    # (engine/segment_flips.py), worked out when an input can move the predictions
    # (orders, a merge, a backfill) and kept until then: a segment timer fired by a
    # count() window reuses it. Appended last, like the digest.
    segments_flip: int | None = None
    # channel -> (event time, event type, source) of the opt-out or opt-in event
    # (email_unsubscribed, sms_resubscribed, ...) its consent last came from, in arrival
    # order like ``consent``; a profile's consent statement drops the channel's entry.
    # Appended last, like the digest.
    consent_changes: dict[str, tuple[int, str, str]] | None = None
    # the processing minute (uint32 little-endian) each ``dedup`` entry was remembered
    # at, in the same order, from the moment the window first filled (None before:
    # ``remember``): entries younger than the horizon are kept beyond DEDUP_WINDOW.
    # Appended last.
    dedup_at: bytearray | None = None
    # 64-bit fingerprints of the order ids and refund ids counted: an order adds to
    # orders and revenue once per id, a refund once, whatever event ids carry them.
    # Appended last.
    facts: bytearray | None = None
    # consent history: one entry per consent statement that changed a channel, in
    # arrival order, the last CONSENT_HISTORY_MAX: (event time, changes, event type,
    # source), changes as "email:off,sms:on" (engine/profile.py). Most customers state
    # consent once: one entry, ~55 packed bytes (a sign-up naming two channels).
    # Appended last.
    consent_history: list[tuple[int, str, str, str]] | None = None

    # --- derived views -------------------------------------------------------------
    @property
    def cart_value(self) -> float:
        if not self.cart:
            return 0.0
        return round(sum(q * p for q, p in self.cart.values()), 2)

    @property
    def cart_items(self) -> int:
        if not self.cart:
            return 0
        return int(sum(q for q, _ in self.cart.values()))

    @property
    def aov(self) -> float:
        return round(self.revenue / self.orders, 2) if self.orders else 0.0

    # --- duplicates ----------------------------------------------------------------
    def remember(self, fingerprint: int, now: int = 0, horizon: int = 0) -> bool:
        """Record an event id fingerprint at processing time ``now``; False if it is
        remembered already. Kept: the last DEDUP_WINDOW ids always, and every id less
        than ``horizon`` ms old (at minute precision, rounded up). Times are only needed
        once the window is full, so they are kept from then on (``dedup_at``): the ids
        a customer had before count as remembered when its window filled (kept at least
        as long as promised; most customers never fill it and pay nothing)."""
        fp = fingerprint.to_bytes(8, "little")
        dedup = self.dedup
        if dedup is None:
            self.dedup = bytearray(fp)
            return True
        if holds(dedup, fp):
            return False
        n = len(dedup) >> 3
        at = self.dedup_at
        if at is None and n < DEDUP_WINDOW:
            dedup += fp
            return True
        minute = (now // 60_000).to_bytes(4, "little")
        if at is None or len(at) != 4 * n:  # the window just filled (or an older row)
            at = self.dedup_at = bytearray(minute * n)
        if n >= DEDUP_WINDOW:  # forget what is past the horizon, down to the last ids
            cutoff = (now - horizon) // 60_000 - 1
            drop = 0
            while (
                drop <= n - DEDUP_WINDOW
                and int.from_bytes(at[4 * drop : 4 * drop + 4], "little") < cutoff
            ):
                drop += 1
            if drop:
                del dedup[: 8 * drop]
                del at[: 4 * drop]
        dedup += fp
        at += minute
        return True

    def first_fact(self, fingerprint: int) -> bool:
        """Record an order or refund id fingerprint; False if it was counted before."""
        fp = fingerprint.to_bytes(8, "little")
        facts = self.facts
        if facts is None:
            self.facts = bytearray(fp)
            return True
        if holds(facts, fp):
            return False
        facts += fp
        return True

    # --- snapshots -----------------------------------------------------------------
    def to_row(self) -> list[Any]:
        """A JSON-able list of the fields in order (checkpoints; ``from_row`` reads it
        back)."""
        return msgspec.to_builtins(self, str_keys=True)  # type: ignore[no-any-return]

    @classmethod
    def from_row(cls, row: list[Any]) -> CustomerState:
        return msgspec.convert(row, cls, str_keys=True)


_pack = msgspec.msgpack.Encoder().encode
_unpack_state = msgspec.msgpack.Decoder(CustomerState).decode


def pack(st: CustomerState) -> bytes:
    """The state as compact bytes (MessagePack of the row), for idle customers in memory."""
    return _pack(st)


def unpack(raw: bytes) -> CustomerState:
    """The state ``pack`` made ``raw`` from."""
    return _unpack_state(raw)


def load(raw: bytes) -> CustomerState:
    """A stored state: packed bytes, or a JSON row of an earlier version (starts with
    ``[``, which no MessagePack array does)."""
    if raw[:1] == b"[":
        return CustomerState.from_row(msgspec.json.decode(raw))
    return unpack(raw)
