"""Scanning a partition's customer states for population models, off the hot path.

Both runtimes keep each partition's customers in a :class:`~state.memory.MemoryStore`
(live states, or the packed bytes of idle ones). A population scan (RFM boundaries) must
neither stall the event loop nor inflate the compacted customers, so :func:`add_store`
walks the store's own mapping a slice at a time, yielding to the loop between slices,
and decodes a compacted customer only up to the fields RFM reads (:func:`rfm_view`).
Used by engine/embedded/models.py and engine/distributed/models.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from engine.intelligence.rfm import RfmBuilder
from state.customer import CustomerState
from state.memory import MemoryStore

__all__ = ["SLICE", "add_store", "rfm_view"]

SLICE = 2000
"""Customers scanned per event loop turn by default."""


class _Head(msgspec.Struct, array_like=True, gc=False):
    """The leading fields of a packed ``CustomerState``, up to those RFM reads (an
    array-like struct ignores the trailing ones)."""

    customer_id: str
    first_seen: int
    last_seen: int
    seq: int = 0
    timezone: Any = None
    consent: Any = None
    attributes: Any = None
    orders: int = 0
    revenue: float = 0.0
    first_order: int | None = None
    last_order: int | None = None


_head = msgspec.msgpack.Decoder(_Head).decode


def rfm_view(held: CustomerState | bytes) -> CustomerState:
    """A state as RFM reads it: a live state as is, packed bytes decoded only up to
    ``last_order`` (the other fields are left empty; never use it for anything else)."""
    if isinstance(held, CustomerState):
        return held
    h = _head(held)
    return CustomerState(
        h.customer_id,
        h.first_seen,
        h.last_seen,
        orders=h.orders,
        revenue=h.revenue,
        first_order=h.first_order,
        last_order=h.last_order,
    )


async def add_store(
    builder: RfmBuilder, store: MemoryStore, now_ms: int, slice_size: int = SLICE
) -> int:
    """Add every customer ``store`` holds to ``builder`` at ``now_ms``, ``slice_size``
    customers per event loop turn; returns how many were read. Customers added or
    removed while the scan yields are counted if still present when their slice runs
    (a consistent snapshot is not promised: the base moves while it is scanned)."""
    # the store's own mapping (live states or their packed bytes): iterating the store
    # would inflate every compacted state
    held = store._data
    ids = list(held)
    seen = 0
    for i in range(0, len(ids), slice_size):
        for cid in ids[i : i + slice_size]:
            st = held.get(cid)
            if st is not None:
                builder.add(rfm_view(st), now_ms)
                seen += 1
        await asyncio.sleep(0)
    return seen
