"""Short fingerprints packed side by side in bytes: a customer's dedup and fact sets
(state/customer.py, 8 bytes each) and the erase indexes of the journal and the actions
file (engine/embedded/storage/journal_index.py, connectors/sinks/jsonl_index.py, 2 bytes
of a customer id each). A hit may be a false positive; a miss is certain."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

__all__ = ["holds", "short", "shorts"]


def short(data: bytes) -> bytes:
    """The 2-byte fingerprint of ``data`` (a customer id, UTF-8)."""
    return (zlib.crc32(data) & 0xFFFF).to_bytes(2, "little")


def shorts(ids: Iterable[str]) -> bytes:
    """The distinct fingerprints (``short``) of ``ids``' UTF-8, side by side in the order
    of their values: one pass of C calls per id and one pack (the journal index runs it on
    the event loop for every event journaled)."""
    values = sorted({zlib.crc32(cid.encode()) & 0xFFFF for cid in ids})
    return struct.pack(f"<{len(values)}H", *values)


def holds(fingerprints: bytes | bytearray, fp: bytes) -> bool:
    """Whether ``fp`` is one of ``fingerprints`` (each ``len(fp)`` bytes, at an offset that
    is a multiple of it)."""
    width = len(fp)
    i = fingerprints.find(fp)
    while i >= 0:
        if i % width == 0:
            return True
        i = fingerprints.find(fp, i + 1)
    return False
