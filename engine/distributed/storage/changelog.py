"""Customer state rows in a faust Table (a compacted changelog topic, co-partitioned with
the ``events`` topic).

The runtime keeps decoded :class:`~state.customer.CustomerState` objects per partition
in memory (a :class:`~state.memory.MemoryStore`) and uses the table only as the durable
log: after a batch it produces one changelog record per customer it touched, to the
partition of the batch's events (co-partitioning), in record batches straight through
the producer (:meth:`TableLog.records`, ``engine.distributed.batching.BatchSender``)
rather than faust's one-message-at-a-time ``send_changelog`` buffer; the runtime awaits
the broker's acks before it acks the events' offsets. After a rebalance the rows faust
restored for a newly assigned partition are decoded once into that partition's store
and dropped from faust's store.

Timers are not a separate table: a pending timer is ``FlowInstance.due`` inside the row,
so restoring the rows restores the timers (the runtime rebuilds its heap from them).

Keys are the customer id as UTF-8 bytes, values the state as MessagePack
(:func:`state.customer.pack`: one C call, about half the bytes of the JSON row); rows
written as JSON (``to_row``) by earlier versions still decode. A deleted customer is a
tombstone (``None``).

Campaign analytics (``nudge worker --analytics on``, docs/analytics.md): a row may carry
the customer's campaign counts since its previous row, framed before the state
(``0xC1``, a byte MessagePack never uses, a 4-byte big-endian length, the counts as
engine/distributed/storage/counts.py packs them, then the state). The row is one record, so
the counts are durable exactly when the state that includes their inputs is; the
aggregator (engine/distributed/analytics.py) reads only the frame (:func:`row_counts`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from state.customer import CustomerState, load, pack

__all__ = ["TableLog", "decode_row", "encode_row", "row_counts"]

logger = logging.getLogger(__name__)


_COUNTS = 0xC1  # never a MessagePack first byte (nor JSON's)


def encode_row(st: CustomerState, counts: bytes | None = None) -> bytes:
    body = pack(st)
    if not counts:
        return body
    return b"\xc1" + len(counts).to_bytes(4, "big") + counts + body


def row_counts(raw: bytes) -> bytes | None:
    """The campaign counts a row carries (``unpack_counts``), None when none."""
    if not raw or raw[0] != _COUNTS:
        return None
    return raw[5 : 5 + int.from_bytes(raw[1:5], "big")]


def decode_row(raw: bytes) -> CustomerState:
    if raw and raw[0] == _COUNTS:
        raw = raw[5 + int.from_bytes(raw[1:5], "big") :]
    return load(raw)


class TableLog:
    """Writes and restores customer rows through ``table`` (a faust Table created with
    ``key_serializer="raw"``, ``value_serializer="raw"``)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def topic(self) -> str:
        """The changelog topic's name."""
        return str(self.table.changelog_topic.get_topic_name())

    @staticmethod
    def records(
        states: Iterable[CustomerState], counts: Mapping[str, bytes] | None = None
    ) -> list[tuple[bytes, bytes | None]]:
        """The changelog records (key, value) of ``states``, with the campaign counts of
        those in ``counts`` (customer id -> packed counts)."""
        if not counts:
            return [(st.customer_id.encode(), encode_row(st)) for st in states]
        get = counts.get
        return [(st.customer_id.encode(), encode_row(st, get(st.customer_id))) for st in states]

    def take_restored(self, partition: int) -> Iterator[CustomerState]:
        """Decode and remove the rows faust restored for ``partition`` (memory store)."""
        store = self.table.data
        key_partition: dict[Any, int] = getattr(store, "_key_partition", {})
        data = store.data
        keys = [k for k, p in key_partition.items() if p == partition]
        for key in keys:
            raw = data.pop(key, None)
            key_partition.pop(key, None)
            if not raw:
                continue
            try:
                yield decode_row(raw)
            except (msgspec.MsgspecError, TypeError, ValueError) as err:
                logger.error("customer row %r no longer decodes (%s); dropped", key, err)
