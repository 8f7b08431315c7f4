"""A held customer's segments digest, read without inflating it: both runtimes' backfills.

The memory store holds an idle customer packed (MessagePack bytes of ``CustomerState``,
state/customer.py ``pack``). A segment backfill (engine/embedded/segment_backfill.py on
``nudge run``, engine/distributed/processing.py ``needs_backfill`` on the workers) first
finds who needs it by comparing each held state's ``segments_digest`` with the rule set's;
:func:`held_digest` reads that field and whether the state is a redirect straight from the
bytes (~1.3 us a customer), leaving every other field undecoded.
"""

from __future__ import annotations

from typing import Any

import msgspec

from state.customer import CustomerState

__all__ = ["held_digest"]

_NIL_BYTES = b"\xc0"  # MessagePack nil
_NIL = msgspec.Raw(_NIL_BYTES)
# a packed CustomerState (array-like: a MessagePack array of its fields in order) with every
# field but the digest left undecoded; a row of an earlier layout lacks the digest (None)
_Digest: Any = msgspec.defstruct(
    "_Digest",
    [
        (name, str | None, None) if name == "segments_digest" else (name, msgspec.Raw, _NIL)
        for name in CustomerState.__struct_fields__
    ],
    array_like=True,
    gc=False,
)
_decode_digest = msgspec.msgpack.Decoder(_Digest).decode


def held_digest(held: CustomerState | bytes) -> tuple[str | None, bool]:
    """A held state's ``segments_digest`` and whether it is a redirect (merged into
    another id), without inflating packed bytes."""
    if isinstance(held, CustomerState):
        return held.segments_digest, held.merged_into is not None
    d = _decode_digest(held)
    return d.segments_digest, bytes(d.merged_into) != _NIL_BYTES
