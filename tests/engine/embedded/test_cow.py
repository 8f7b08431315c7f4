"""After a fork, populate_heap lifts the write protection in bulk (engine/embedded/cow.py),
and the spool a checkpoint child hands to its writer round-trips (spool.py)."""

from __future__ import annotations

import io
import os
import resource
import sys
from pathlib import Path

import pytest

from engine.embedded.cow import populate_heap
from engine.embedded.spool import SpoolWriter, read_spool, write_spool


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(sys.platform != "linux", reason="MADV_POPULATE_WRITE is Linux's")
def test_populate_heap_removes_the_faults_a_fork_leaves() -> None:
    objs = [{"a": i, "b": [i]} for i in range(200_000)]

    def faults_after_fork(populate: bool) -> int:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        if populate:
            assert populate_heap() > 0
        f0 = _faults()
        for o in objs:
            o["a"] = 1
        return _faults() - f0

    plain = faults_after_fork(False)
    populated = faults_after_fork(True)
    assert plain > 1000  # the writes did fault on write-protected pages
    assert populated < plain / 10


def test_spool_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.spool"
    outbox = [("k1", "c1", b'{"x":1}', 5)]
    chunks = [[("c1", b"\x01\x02")], [("c2", b"\x03"), ("c3", b"")]]
    write_spool(path, {0: 7, 3: 9}, ["gone"], outbox, chunks)
    with path.open("rb") as fh:
        seqs, deleted, box, after, rows = read_spool(fh)
        assert (seqs, deleted, box, after) == ({0: 7, 3: 9}, ["gone"], outbox, [])
        assert list(rows) == chunks


def test_spool_written_incrementally(tmp_path: Path) -> None:
    """A paced checkpoint's spool: rows as they are packed, the trailer last."""
    path = tmp_path / "p.spool"
    with SpoolWriter(path) as out:
        out.rows([("a", b"1")])
        out.rows([])  # an empty slice writes no frame
        out.rows([("b", b"2")])
        out.trailer({1: 4}, ["x"], [], ["a"])
    with path.open("rb") as fh:
        seqs, deleted, box, after, rows = read_spool(fh)
        assert (seqs, deleted, box, after) == ({1: 4}, ["x"], [], ["a"])
        assert list(rows) == [[("a", b"1")], [("b", b"2")]]


def test_a_spool_without_its_trailer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.spool"
    with SpoolWriter(path) as out:
        out.rows([("a", b"1")])  # the packing stopped before the trailer
    with path.open("rb") as fh, pytest.raises(ValueError, match="no trailer"):
        read_spool(fh)


def test_a_truncated_spool_is_refused() -> None:
    """A writer never commits part of a spool (a child killed while writing it)."""
    with pytest.raises(ValueError, match="truncated"):
        read_spool(io.BytesIO(b"\x00\x00\x00\x10abc"))
    with pytest.raises(ValueError, match="empty"):
        read_spool(io.BytesIO(b""))
