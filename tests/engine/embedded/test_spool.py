"""The spool a paced checkpoint hands to its writer (engine/embedded/spool.py): it
round-trips, and an incomplete one is refused."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.analytics.tally import ORPHAN, Tally
from engine.embedded.spool import SpoolWriter, read_spool, writer_env
from engine.embedded.storage.sqlite import SqliteStore
from state.analytics import HOUR_MS, PENDING_PREFIX, is_pending, pending_cells


def test_spool_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.spool"
    outbox = [("k1", "c1", b'{"x":1}', 5)]
    chunks = [[("c1", b"\x01\x02")], [("c2", b"\x03"), ("c3", b"")]]
    with SpoolWriter(path) as out:
        for rows in chunks:
            out.rows(rows)
        out.trailer({0: 7, 3: 9}, ["gone"], outbox)
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
    """A writer never commits part of a spool (an engine killed while writing it)."""
    with pytest.raises(ValueError, match="truncated"):
        read_spool(io.BytesIO(b"\x00\x00\x00\x10abc"))
    with pytest.raises(ValueError, match="empty"):
        read_spool(io.BytesIO(b""))


def test_the_writer_takes_its_settings_from_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is a fresh process at every checkpoint round: it is handed the settings
    it needs (``writer_env``) instead of importing pydantic-settings to read them (~0.2 s
    of CPU a round beside the engine). A setting the engine read before it changed is
    the one used, and the writer never imports pydantic-settings."""
    data = tmp_path / "data"
    SqliteStore(data, synchronous="NORMAL").close()
    spool = data / "w.spool"
    with SpoolWriter(spool) as out:
        out.rows([("c1", b"\x01"), ("c2", b"\x02")])
        out.trailer({0: 5}, [], [])
    monkeypatch.setenv("NUDGE_CHECKPOINT_STEP", "1")
    env = writer_env()
    env["NUDGE_CHECKPOINT_STEP"] = "many"  # invalid: read again here, it would fail
    code = (
        "import sys; from engine.embedded import spool; rc = spool.main(sys.argv[1:]); "
        "assert 'pydantic_settings' not in sys.modules, 'imported'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data), "NORMAL", str(spool)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not spool.exists()
    db = sqlite3.connect(data / "states.db")
    assert db.execute("SELECT COUNT(*) FROM states").fetchone()[0] == 2
    db.close()


def _tally() -> Tally:
    """Counts of two customers over two hours, and an erased customer's (orphaned)."""
    t = Tally(3)
    t.add("c1", 10 * HOUR_MS, [("r", 1, "a", 0, "reached"), ("r", 1, "a", 0, "sent:email")])
    t.add("c1", 11 * HOUR_MS, [("r", 1, "a", 0, "reached")])
    t.add("c2", 11 * HOUR_MS, [("w", 2, "", -1, "entered")])
    t.add_counts("gone", 11 * HOUR_MS, [(("w", 2, "", -1, "revenue_cents"), 1999)])
    t.orphan("gone")
    return t


def test_counts_under_note_ids_reach_the_writer_as_pending_rows(tmp_path: Path) -> None:
    """A paced round writes counts under note ids (the loop does not build the cells);
    the writer's read gives the same pending rows the engine would have built, also for
    notes first seen between two slices and for the orphaned counts."""
    expected, sent = _tally(), _tally()
    late = [("x", 1, "b", 2, "suppressed:consent")]
    path = tmp_path / "ids.spool"
    with SpoolWriter(path) as out:
        rows, n = sent.id_rows(sent.take(["c1"]), 0)
        out.rows([("c1", b"state1"), *rows])
        sent.add("c2", 11 * HOUR_MS, late)  # a note the first slice's table did not name
        rows, n = sent.id_rows(sent.take(["c2", ORPHAN]), n)
        out.rows([*rows, ("c2", b"state2")])
        out.trailer({3: 5}, [], [])
    assert n == 5
    expected.add("c2", 11 * HOUR_MS, late)
    first = expected.rows(expected.take(["c1"]))
    second = expected.rows(expected.take(["c2", ORPHAN]))
    with path.open("rb") as fh:
        chunks = list(read_spool(fh)[4])
    assert chunks == [[("c1", b"state1"), *first], [*second, ("c2", b"state2")]]
    cells = {k: sorted(pending_cells(v)) for k, v in chunks[1] if is_pending(k)}
    assert cells == {
        PENDING_PREFIX + "c2": [
            ("w", 2, "", -1, "entered", 11, 1),
            ("x", 1, "b", 2, "suppressed:consent", 11, 1),
        ],
        PENDING_PREFIX + "\x00orphans:3": [("w", 2, "", -1, "revenue_cents", 11, 1999)],
    }


def test_counts_under_a_note_id_no_row_named_are_refused(tmp_path: Path) -> None:
    """A writer never commits counts it cannot name: the spool is refused."""
    t = _tally()
    rows, _ = t.id_rows(t.take(["c1"]), 0)
    path = tmp_path / "bad.spool"
    with SpoolWriter(path) as out:
        out.rows(rows[1:])  # the note table left out
        out.trailer({3: 5}, [], [])
    with path.open("rb") as fh, pytest.raises(ValueError, match="not in table 3"):
        list(read_spool(fh)[4])


def test_given_back_counts_are_pending_again_under_the_same_ids() -> None:
    t = _tally()
    before = t.totals()
    taken = t.take(["c1", "c2", ORPHAN])
    assert not t.totals()
    t.give_back(taken)
    assert t.totals() == before
