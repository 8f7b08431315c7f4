"""Short fingerprints packed side by side in bytes: a customer's dedup and fact sets
(state/customer.py, 8 bytes each) and the erase indexes of the journal and the actions
file (engine/embedded/storage/journal_index.py, connectors/sinks/jsonl_index.py, 2 bytes
of a customer id each). A hit may be a false positive; a miss is certain."""

from __future__ import annotations

import zlib

__all__ = ["holds", "short"]


def short(data: bytes) -> bytes:
    """The 2-byte fingerprint of ``data`` (a customer id, UTF-8)."""
    return (zlib.crc32(data) & 0xFFFF).to_bytes(2, "little")


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
