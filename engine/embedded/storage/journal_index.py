"""Which journal rows hold a customer's events: an in-memory index, for erasure.

Erasing a customer replaces its journaled events with ``null``. Reading the whole retained
journal to find them costs O(journal): at 1M customers (a ~120 MB journal) over a second
per erase. This index keeps, per journal row, a 16-bit fingerprint (CRC-32, low half) of
each distinct customer id among its events: ~2 bytes an event, ~1 MB per 500k events,
built once at start and then kept current incrementally. An erase reads and decodes only
the rows whose fingerprints include the id's; a fingerprint shared with another id costs a
decode, never a miss (the row is decoded and each event's id compared exactly).

Rows are read through a connection of the index's own (WAL: readers never block the
journal's writer), rows appended since the last refresh at the next one (the runtime
indexes every second, on its event loop in slices of ~256 KB, and every erase refreshes
first), rows trimmed from the journal dropped. The runtime also hands over each row it
journaled with the customer ids of its events (:meth:`JournalIndex.note`, after the
group commit): a refresh takes those as they are, so under load it reads from the journal
only the rows it was not handed (at start, or a row noted late), and decodes nothing.
Reading is not done in a thread: indexing is Python work (~45 us a row of 100 events read
and decoded, ~20 us noted), and a thread running it beside the event loop and the
journal's thread makes each of them wait for the GIL at every hand-over. At 25,000
events/s that made the checkpoint round's refresh of ~2,500 rows last ~1 s and was most of
``nudge run``'s p99 (load_tests/bench_ingest.py: 0.56-0.62% of the probes over 50 ms
without it, 1.7-6.6% with it, same host, alternating).

Bodies that are not a plain JSON array (a format this module does not know) are indexed as
holding every id, so they are always decoded by the erase: a store whose bodies are sealed
at rest passes ``open_body`` (body -> plaintext), else every sealed row would be one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from state.fingerprints import holds, short, shorts

__all__ = ["Identified", "JournalIndex", "fingerprint"]


class Identified(Protocol):
    """An event as :meth:`JournalIndex.note` reads it."""

    @property
    def customer_id(self) -> str: ...


class _Cid(msgspec.Struct):
    customer_id: str


_ids = msgspec.json.Decoder(list[_Cid | None])
_STEP_BATCH = 4  # rows per read in a step: a request's row is ~13 KB at 100 events


def fingerprint(customer_id: str) -> bytes:
    return short(customer_id.encode())


def fingerprints(body: bytes) -> bytes | None:
    """The sorted distinct fingerprints of the ids of a journal body's events (erased
    ones, ``null``, left out); None for a body this module cannot read."""
    try:
        events = _ids.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return shorts(e.customer_id for e in events if e is not None)


class JournalIndex:
    """Fingerprints of the journal at ``path``, by row (the row's first seq); ``open_body``
    turns a stored body into the JSON array (a store sealing bodies at rest)."""

    def __init__(
        self,
        path: Path,
        batch: int = 64,
        open_body: Callable[[bytes], bytes] | None = None,
        empty_from: int = 0,
    ) -> None:
        self.path = path
        self.batch = batch
        self._open_body = open_body
        # in seq order (inserted in order); None: a body of unknown format (any id)
        self._rows: dict[int, bytes | None] = {}
        self.upto = 0  # the last row indexed
        # the seq after the last indexed row's events; 0: unknown until the journal is read
        # (``empty_from``: the journal is empty and its next row will have this seq)
        self._next = empty_from
        # rows handed over by ``note`` (seq, events, fingerprints), not yet taken: appended
        # on the event loop without the lock (a deque's append and popleft are atomic)
        self._noted: deque[tuple[int, int, bytes]] = deque()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def note(self, first: int, rows: Sequence[Sequence[Identified]]) -> None:
        """Rows just journaled, from seq ``first`` on, each as its events in order: taken
        by the next refresh instead of read from the journal and decoded. Never waits
        (the caller is the event loop)."""
        seq = first
        noted = self._noted
        for events in rows:
            noted.append((seq, len(events), shorts(e.customer_id for e in events)))
            seq += len(events)

    def _take_noted(self) -> None:
        """Index the noted rows that follow the last indexed one, drop those indexed
        already (read from the journal before their note came), keep those after a gap
        (rows not indexed yet: the journal is read first). Under the lock."""
        noted = self._noted
        while noted:
            seq, n, fps = noted[0]
            if not self._next or seq > self._next:
                return  # not known to follow the last indexed row
            noted.popleft()
            if seq == self._next:
                self._rows[seq] = fps
                self.upto, self._next = seq, seq + n

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._db

    def refresh(self) -> int:
        """Index the rows appended since the last refresh and forget the trimmed ones;
        returns how many rows were read. Safe from any thread (one at a time)."""
        if not self.path.exists():
            return 0
        with self._lock:
            return self._read(None)[0]

    def step(self, budget: int) -> bool | None:
        """A slice of :meth:`refresh` for the event loop's own thread: index appended rows
        until about ``budget`` bytes of bodies are read; True if more are left. Never
        waits: None if a refresh runs on another thread now (an erase's; try later)."""
        if not self.path.exists():
            return False
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._read(budget)[1]
        finally:
            self._lock.release()

    def _read(self, budget: int | None) -> tuple[int, bool]:
        """Forget the trimmed rows, then index appended ones, a batch per read transaction
        (a long one would hold back the journal's WAL checkpoints); stops once ``budget``
        bytes are read (None: at the end). Returns the rows read and whether any are left."""
        db = self._conn()
        low = db.execute("SELECT MIN(seq) FROM journal").fetchall()[0][0]
        rows = self._rows
        if low is None:
            rows.clear()
        else:
            trimmed = []
            for seq in rows:  # oldest first
                if seq >= low:
                    break
                trimmed.append(seq)
            for seq in trimmed:
                del rows[seq]
        self._take_noted()
        opened = self._open_body
        batch = self.batch if budget is None else _STEP_BATCH
        n = size = 0
        while True:
            got = db.execute(
                "SELECT seq, n, body FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
                (self.upto, batch),
            ).fetchall()
            for seq, count, body in got:
                raw = bytes(body)
                size += len(raw)
                rows[int(seq)] = fingerprints(raw if opened is None else opened(raw))
                self.upto, self._next = int(seq), int(seq) + int(count)
            n += len(got)
            if len(got) < batch:
                self._take_noted()
                return n, False
            if budget is not None and size >= budget:
                return n, True

    def candidates(self, customer_id: str) -> list[int]:
        """The rows (first seqs) that may hold an event of ``customer_id``."""
        fp = fingerprint(customer_id)
        with self._lock:
            return [s for s, fps in self._rows.items() if fps is None or holds(fps, fp)]

    def rewritten(self, seq: int, body: bytes) -> None:
        """Row ``seq`` was rewritten (an erase): index its new body."""
        fps = fingerprints(body)
        with self._lock:
            if seq in self._rows:
                self._rows[seq] = fps

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
