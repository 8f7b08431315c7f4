"""The journal's customer index (engine/embedded/storage/journal_index.py): an erase reads
only the rows that may hold the customer's events, finds every one of them (rows
appended since the last refresh included, a fingerprint shared with another id costing a
decode, never a miss), and forgets trimmed rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.embedded.storage.journal_index import fingerprint
from engine.embedded.storage.sqlite import SqliteStore


def _body(*cids: str, tag: str = "") -> tuple[int, bytes]:
    events = [
        {
            "event_id": f"{tag}-{i}",
            "type": "page_viewed",
            "customer_id": cid,
            "timestamp": "2026-12-04T10:00:00Z",
            "properties": {"note": f"for {cid}"},
        }
        for i, cid in enumerate(cids)
    ]
    return len(events), orjson.dumps(events)


def _ids_in(store: SqliteStore) -> list[list[str | None]]:
    out = []
    for (body,) in store.jdb.execute("SELECT body FROM journal ORDER BY seq"):
        out.append([e and e["customer_id"] for e in orjson.loads(body)])
    return out


def _collider(cid: str) -> str:
    """Another id with the same 16-bit fingerprint."""
    fp = fingerprint(cid)
    return next(f"x{i}" for i in range(1_000_000) if fingerprint(f"x{i}") == fp)


def test_an_erase_reads_only_the_rows_that_may_hold_the_customer(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, synchronous="NORMAL")
    twin = _collider("c1")
    store.append(1, [_body("c1", "c2", tag="a"), _body("c12", "c3", tag="b")])
    store.append(2, [_body("c4", twin, tag="c"), _body("c5", tag="d")])
    assert store.refresh_index() == 4
    first = [int(s) for (s,) in store.jdb.execute("SELECT seq FROM journal ORDER BY seq")]
    # the row of c1, and the row of the id sharing its fingerprint; not c12's nor c5's
    assert store.journal_index.candidates("c1") == [first[0], first[2]]
    # appended after the last refresh: indexed by the erase's own refresh
    store.append(3, [_body("c6", "c1", "c1", tag="e")])
    assert store.erase_from_journal("c1") == 3
    assert _ids_in(store) == [
        [None, "c2"],
        ["c12", "c3"],
        ["c4", twin],  # decoded (same fingerprint), left whole
        ["c5"],
        ["c6", None, None],
    ]
    assert b'"c1"' not in b"".join(
        bytes(b) for (b,) in store.jdb.execute("SELECT body FROM journal")
    )
    # the rewritten row no longer names c1: the next erase of it reads nothing of it
    assert store.journal_index.candidates("c1") == [first[2]]
    assert store.erase_from_journal("c1") == 0
    store.close()


def test_trimmed_rows_are_forgotten_and_a_fresh_store_indexes_from_disk(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, synchronous="NORMAL")
    store.append(1, [_body("c1", tag="a")])
    store.append(2, [_body("c2", tag="b")])
    store.append(3, [_body("c1", tag="c")])
    store.refresh_index()
    assert len(store.journal_index) == 3
    assert store.trim_journal(upto_seq=2, before=10) == 2
    store.refresh_index()
    assert len(store.journal_index) == 1
    store.close()
    again = SqliteStore(tmp_path, synchronous="NORMAL")  # a restart: built from the file
    assert again.erase_from_journal("c1") == 1
    assert _ids_in(again) == [[None]]
    again.close()


def test_the_loops_steps_read_a_budget_at_a_time_and_never_wait(tmp_path: Path) -> None:
    """The runtime indexes on its event loop (engine/embedded/upkeep.py): each step reads
    about ``budget`` bytes of bodies, says whether rows are left, and gives way (None)
    while another thread refreshes, instead of waiting for it."""
    store = SqliteStore(tmp_path, synchronous="NORMAL")
    bodies = [_body(f"c{i}", f"d{i}", tag=str(i)) for i in range(12)]
    store.append(1, bodies)
    index = store.journal_index
    size = len(bodies[0][1])
    steps = []
    while (more := store.index_step(size)) is True:
        steps.append(len(index))
    assert more is False
    # whole batches of 4 rows a step; a full batch may be the last (the next step says so)
    assert steps == [4, 8, 12]
    assert len(index) == 12
    seqs = [int(s) for (s,) in store.jdb.execute("SELECT seq FROM journal ORDER BY seq")]
    assert index.candidates("c7") == [seqs[7]]
    store.append(2, [_body("c1", tag="late")])
    with index._lock:  # an erase's refresh, on another thread
        assert store.index_step(size) is None
    assert store.index_step(size) is False
    assert len(index) == 13
    store.close()


@dataclass(frozen=True)
class _Ev:
    customer_id: str


def _noted(store: SqliteStore, *rows: tuple[str, ...]) -> None:
    """Journal ``rows`` (each the ids of its events) as one commit and hand them over as
    the runtime does after it (engine/embedded/ingest.py ``on_rows``)."""
    first = store.append(1, [_body(*ids, tag=f"{ids}") for ids in rows])
    store.journal_index.note(first, [[_Ev(cid) for cid in ids] for ids in rows])


def test_rows_handed_over_after_the_commit_are_not_read_again(tmp_path: Path) -> None:
    """The group commit hands each row it journaled to the index with its events' ids: a
    refresh takes them without reading the journal, and an erase finds the customer in
    them."""
    store = SqliteStore(tmp_path, synchronous="NORMAL")
    _noted(store, ("c1", "c2"), ("c3",))
    _noted(store, ("c4", "c1", "c1"))
    assert store.refresh_index() == 0  # nothing read from the journal
    seqs = [int(s) for (s,) in store.jdb.execute("SELECT seq FROM journal ORDER BY seq")]
    assert store.journal_index.candidates("c1") == [seqs[0], seqs[2]]
    assert store.journal_index.candidates("c3") == [seqs[1]]
    assert store.erase_from_journal("c1") == 3
    assert _ids_in(store) == [[None, "c2"], ["c3"], ["c4", None, None]]
    store.close()


def test_a_row_not_handed_over_is_read_and_later_notes_wait_for_it(tmp_path: Path) -> None:
    """A note is taken only right after the last indexed row: a row committed without
    one (or whose note comes late) is read from the journal, and a note of a row indexed
    already is dropped. A restarted store reads its journal before taking any note."""
    store = SqliteStore(tmp_path, synchronous="NORMAL")
    store.append(1, [_body("c1", tag="unnoted")])
    _noted(store, ("c2",))
    assert store.refresh_index() == 2  # the unnoted row, and the one after it
    _noted(store, ("c3",))
    assert store.refresh_index() == 0
    seqs = [int(s) for (s,) in store.jdb.execute("SELECT seq FROM journal ORDER BY seq")]
    for cid, seq in zip(("c1", "c2", "c3"), seqs, strict=True):
        assert store.journal_index.candidates(cid) == [seq]
    store.close()
    again = SqliteStore(tmp_path, synchronous="NORMAL")  # the rows before: on disk only
    _noted(again, ("c4",))
    assert again.refresh_index() == 4
    assert again.journal_index.candidates("c1") == [seqs[0]]
    assert again.erase_from_journal("c4") == 1
    again.close()
