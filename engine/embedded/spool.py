"""A checkpoint's hand-over file, and the writer process that commits it.

The forked checkpoint child (engine/embedded/snapshot.py) only serializes: it writes the
snapshot to a spool file in the data directory and ``exec``s this module, which loads the
spool into SQLite (``state.sqlite.write_snapshot``) and deletes it. The child so shares the
parent's memory for the ~0.1 s of packing instead of the ~1.5 s of SQLite writes, and each
page the parent writes during that time is a page it must copy (load_tests/
bench_fork_faults.py: 2.4-2.6 us per fault while the child lives, 0.9 us after).

Format: MessagePack frames, each a 4-byte big-endian length and a body. The first frame is
the header ``[seqs, deleted, outbox rows]``; every further frame is a list of
``[customer_id, state bytes]`` rows. A spool is never read by the engine itself: if the
writer fails, the checkpoint did not happen (the journal still holds its events) and the
next checkpoint writes a new spool.

    python -m engine.embedded.spool DATA_DIR SYNCHRONOUS SPOOL
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from state.sqlite import write_snapshot

__all__ = ["main", "read_spool", "write_spool"]

_LEN = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_header = msgspec.msgpack.Decoder(
    tuple[dict[int, int], list[str], list[tuple[str, str, bytes, int]]]
)
_rows = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def _frame(fh: IO[bytes], obj: Any) -> None:
    body = _enc.encode(obj)
    fh.write(_LEN.pack(len(body)))
    fh.write(body)


def write_spool(
    path: Path,
    seqs: dict[int, int],
    deleted: list[str],
    outbox: list[tuple[str, str, bytes, int]],
    chunks: Iterable[list[tuple[str, bytes]]],
) -> None:
    """Write a checkpoint's spool (not synced: it only has to outlive this process)."""
    with path.open("wb", buffering=1 << 20) as fh:
        _frame(fh, (seqs, deleted, outbox))
        for rows in chunks:
            _frame(fh, rows)


def _frames(fh: IO[bytes]) -> Iterator[bytes]:
    while head := fh.read(_LEN.size):
        if len(head) < _LEN.size:
            raise ValueError("truncated spool frame header")
        (n,) = _LEN.unpack(head)
        body = fh.read(n)
        if len(body) < n:
            raise ValueError("truncated spool frame")
        yield body


def read_spool(
    fh: IO[bytes],
) -> tuple[
    dict[int, int],
    list[str],
    list[tuple[str, str, bytes, int]],
    Iterator[list[tuple[str, bytes]]],
]:
    """The header and an iterator over the state chunks of an open spool."""
    frames = _frames(fh)
    first = next(frames, None)
    if first is None:
        raise ValueError("empty spool")
    seqs, deleted, outbox = _header.decode(first)
    return seqs, deleted, outbox, (_rows.decode(body) for body in frames)


def main(argv: list[str] | None = None) -> int:
    data_dir, synchronous, spool = argv if argv is not None else sys.argv[1:]
    path = Path(spool)
    with path.open("rb") as fh:
        seqs, deleted, outbox, chunks = read_spool(fh)
        write_snapshot(data_dir, synchronous, outbox, deleted, chunks, seqs)
    path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
