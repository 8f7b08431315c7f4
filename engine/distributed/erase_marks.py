"""Erase marks: a customer erased on the distributed runtime stays erased when its
partition of the ``events`` topic is processed again.

An erase is a request record in the customer's partition of the ``events`` topic
(engine/distributed/requests.py), at position N (its offset + 1). The customer's events
before it stay in the topic until the topic's retention deletes them (records cannot be
deleted one by one from a non-compacted topic). A worker that processes the partition
again from a committed offset before N (a crash or a rebalance before the commit, an
operator resetting the group's offsets) would rebuild the customer from them, run its
flows, produce its actions and write its state back to the changelog; the erase request
would erase it again at N, but the actions and the rows would have been produced. The
mark prevents that: on the partition, every event of an erased id at a position before
its mark is skipped (counted as ``erased_skipped``); events after the erase are
processed as usual (the id comes back as a new, empty customer, unless suppressed).

The mark is a changelog row of the partition, written with the customer's tombstone (one
produce, so the erase's reply, sent once both are acknowledged, implies both are
durable). Its key is ``\\x00erased:`` and the BLAKE2b-128 of the id (the id itself is
not in it: a known id can be checked against it, as against the suppression list); its
value a :class:`~state.customer.CustomerState` under that key with ``seq`` the erase's
position and ``first_seen`` its acceptance time, so it is restored with the rows when the
partition is assigned (engine/distributed/processing.py splits the marks out). A mark
is dropped (a tombstone) once it is older than ``ttl`` (default 7 days, Kafka's default
``retention.ms``): by then the events before it are gone from a topic kept that long.
With a longer retention, raise the engine's ``erase_mark_ttl`` to match.

Cost: one row and ~100 bytes of memory per erase per partition, kept for ``ttl``;
checking an event costs nothing once the partition is past its last mark (the usual
case), otherwise one hash of the event's customer id.
"""

from __future__ import annotations

import hashlib

from state.customer import CustomerState

__all__ = ["DEFAULT_TTL", "MARK_PREFIX", "EraseMarks", "is_mark", "mark_key"]

MARK_PREFIX = "\x00erased:"
"""Key prefix of a mark row (a NUL: no customer id the HTTP edge accepts starts so)."""
DEFAULT_TTL = 7 * 86_400_000
"""How long a mark is kept (ms): Kafka's default ``retention.ms``."""
_HASH_KEY = b"nudge-erase-mark"


def mark_key(customer_id: str) -> str:
    """The mark row's key (and customer id) for ``customer_id``."""
    h = hashlib.blake2b(customer_id.encode(), digest_size=16, key=_HASH_KEY)
    return MARK_PREFIX + h.hexdigest()


def is_mark(st: CustomerState) -> bool:
    return st.customer_id.startswith(MARK_PREFIX)


class EraseMarks:
    """One partition's marks: key -> (position, erased at). ``pending``: rows to write
    (new or moved marks) and ``dropped``: keys to tombstone (expired marks), both taken
    by the partition's next changelog write (:meth:`take`)."""

    def __init__(self) -> None:
        self._marks: dict[str, tuple[int, int]] = {}
        self.until = 0  # the highest mark's position: events at or after it are not hidden
        self.oldest: int | None = None
        self.pending: list[CustomerState] = []
        self.dropped: list[str] = []

    def __len__(self) -> int:
        return len(self._marks)

    def restore(self, st: CustomerState) -> bool:
        """Keep ``st`` if it is a mark row (True), else False: a customer's row."""
        if not is_mark(st):
            return False
        self._set(st.customer_id, st.seq, st.first_seen)
        return True

    def _set(self, key: str, position: int, at: int) -> None:
        self._marks[key] = (position, at)
        self.until = max(self.until, position)
        self.oldest = at if self.oldest is None else min(self.oldest, at)

    def add(self, customer_id: str, position: int, at: int) -> None:
        """Mark ``customer_id`` erased at ``position`` (the request's offset + 1), accepted
        at ``at``; a mark at that position or later is kept as it is (a reprocessed
        request writes nothing)."""
        key = mark_key(customer_id)
        held = self._marks.get(key)
        if held is not None and held[0] >= position:
            return
        self._set(key, position, at)
        self.pending.append(CustomerState(key, at, at, seq=position))

    def hides(self, customer_id: str, position: int) -> bool:
        """Whether an event of ``customer_id`` at ``position`` (offset + 1) came before
        the id's erase: skip it."""
        if position >= self.until:
            return False
        held = self._marks.get(mark_key(customer_id))
        return held is not None and position < held[0]

    def expire(self, now: int, ttl: int) -> int:
        """Drop the marks erased more than ``ttl`` ms before ``now`` (tombstoned at the
        next write); returns how many."""
        if self.oldest is None or now - self.oldest <= ttl:
            return 0
        old = [k for k, (_, at) in self._marks.items() if now - at > ttl]
        for k in old:
            del self._marks[k]
        self.dropped += old
        self.until = max((p for p, _ in self._marks.values()), default=0)
        self.oldest = min((at for _, at in self._marks.values()), default=None)
        return len(old)

    def take(self) -> tuple[list[CustomerState], list[str]]:
        """The mark rows to write and the keys to tombstone since the last take."""
        rows, self.pending = self.pending, []
        dropped, self.dropped = self.dropped, []
        return rows, dropped
