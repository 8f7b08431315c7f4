"""The campaign counts a changelog row carries (engine/distributed/storage/changelog.py),
packed small: they ride on a large share of the rows, and every byte is produced,
replicated, restored and read by the aggregator.

One flat MessagePack array: the format (1), then per (rule, version, variant, hour) group
its four fields, the number of cells and each cell's step, metric and count. The common
metrics are small integers (``METRICS``), others their name. A row of a few cells of one
or two rules is some 40-80 bytes (the cells one by one, as ``state.analytics.pending_row``
packs them for ``nudge run``'s checkpoints, took about 200 on a storefront trace).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from state.analytics import Cell

__all__ = ["METRICS", "pack_counts", "unpack_counts"]

METRICS = (
    "entered",
    "reached",
    "completed",
    "holdout",
    "conversions",
    "revenue_cents",
    "sent:email",
    "sent:sms",
    "sent:push",
    "sent:webhook",
)
_CODE = {m: i for i, m in enumerate(METRICS)}
_FORMAT = 1

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[Any])


def pack_counts(counts: Counter[Cell]) -> bytes:
    groups: dict[tuple[str, int, str, int], list[Any]] = {}
    for (rid, ver, variant, step, metric, hour), n in counts.items():
        if n:
            cells = groups.get((rid, ver, variant, hour))
            if cells is None:
                cells = groups[(rid, ver, variant, hour)] = []
            cells += (step, _CODE.get(metric, metric), n)
    out: list[Any] = [_FORMAT]
    for key, cells in groups.items():
        out += (*key, len(cells) // 3, *cells)
    return _enc.encode(out)


def unpack_counts(body: bytes) -> Counter[Cell]:
    """The counts of ``pack_counts``; raises ``ValueError`` on another format."""
    flat = _dec.decode(body)
    if not flat or flat[0] != _FORMAT:
        raise ValueError(f"campaign counts of format {flat[:1]}, this version reads {_FORMAT}")
    out: Counter[Cell] = Counter()
    i, end = 1, len(flat)
    while i < end:
        rid, ver, variant, hour, n_cells = flat[i : i + 5]
        i += 5
        for _ in range(n_cells):
            step, metric, n = flat[i : i + 3]
            i += 3
            name = METRICS[metric] if isinstance(metric, int) else metric
            out[(rid, ver, variant, step, name, hour)] += n
    return out
