"""Where a customer's lines are in a JSONL actions file, for redaction (erasure).

Per 1 MiB chunk of the file, the 16-bit fingerprints (CRC-32, low half) of the customer
ids of the lines that start in it: 2 bytes a line (1M actions: 2 MB). A redaction reads
only the chunks whose fingerprints include the id's (a fingerprint shared with another
id costs reading a chunk, never a miss: every line read is matched exactly). Built from
the file when the sink opens it, then kept by the sink as it appends; a line whose id
cannot be read cheaply (an escaped character) marks its chunk as holding every id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO

from state.fingerprints import holds, short

__all__ = ["CHUNK", "LineIndex", "fingerprint"]

CHUNK = 1 << 20
_KEY = b'"customer_id":"'


def fingerprint(customer_id: str) -> bytes:
    return short(customer_id.encode())


def _line_fingerprint(line: bytes) -> bytes | None:
    """The fingerprint of a line's customer id, read as the sink writes it; None when it
    cannot be read cheaply (no such key, an escape in the id)."""
    i = line.find(_KEY)
    if i < 0:
        return None
    i += len(_KEY)
    j = line.find(b'"', i)
    if j < 0 or b"\\" in line[i:j]:
        return None
    return short(line[i:j])


class LineIndex:
    """The fingerprints by chunk of a file's first ``size`` bytes (whole lines)."""

    def __init__(self) -> None:
        self.size = 0
        self._fps: list[bytearray] = []
        self._any: set[int] = set()

    def add(self, lines: bytes) -> None:
        """Index ``lines`` (whole ``\\n``-terminated lines), appended at ``size``."""
        at = self.size
        start = 0
        n = len(lines)
        while start < n:
            end = lines.find(b"\n", start)
            if end < 0:  # not a whole line: indexed as one anyway
                end = n
            chunk = (at + start) // CHUNK
            while len(self._fps) <= chunk:
                self._fps.append(bytearray())
            fp = _line_fingerprint(lines[start:end])
            if fp is None:
                self._any.add(chunk)
            else:
                self._fps[chunk] += fp
            start = end + 1
        self.size = at + n

    @classmethod
    def of_file(cls, file: IO[bytes], size: int) -> LineIndex:
        """The index of the first ``size`` bytes of ``file`` (whole lines)."""
        index = cls()
        pos = 0
        rest = b""
        while pos < size:
            block = os.pread(file.fileno(), min(8 * CHUNK, size - pos), pos)
            if not block:
                break
            pos += len(block)
            data = rest + block
            cut = data.rfind(b"\n") + 1
            index.add(data[:cut])
            rest = data[cut:]
        return index

    def chunks(self, customer_id: str) -> Iterator[int]:
        """The chunks that may hold a line of ``customer_id``."""
        fp = fingerprint(customer_id)
        for i, fps in enumerate(self._fps):
            if i in self._any or holds(fps, fp):
                yield i
