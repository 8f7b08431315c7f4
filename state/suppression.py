"""Customers erased with suppression (``DELETE /v1/customers/{id}?suppress=true``): their
later events are dropped at the edge and counted, and the id itself is not kept.

The list holds salted hashes (BLAKE2b-128 of a random 16-byte salt and the id): a copied
data directory does not tell which ids were erased, though a known id can still be
checked against it, which is what the list is for. The salt is created with the list and
kept beside it; both live in ``suppressed.db`` (SQLite, ``secure_delete``), loaded into
memory at start (16 bytes an id). Hashing costs an event nothing while the list is empty.
"""

from __future__ import annotations

import hashlib

__all__ = ["digest"]


def digest(salt: bytes, customer_id: str) -> bytes:
    """The suppression list's key for ``customer_id``: BLAKE2b-128 keyed by ``salt``."""
    return hashlib.blake2b(customer_id.encode(), digest_size=16, key=salt).digest()
