"""SqliteStore's journal and outbox writes (multi-row statements): seqs stay consecutive
across transactions and restarts, and the outbox keeps first writes and settled keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.embedded.storage.sqlite import SqliteStore, write_snapshot


def test_journal_seqs_consecutive_across_appends_and_reopen(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    assert store.append(1000, [(3, b"[a]"), (2, b"[b]")]) == 1
    many = [(1, b"[x]")] * 450  # more rows than one statement takes: one transaction
    assert store.append(1001, many) == 6
    store.close()
    store = SqliteStore(tmp_path)
    assert store.append(1002, [(1, b"[c]")]) == 456
    entries = list(store.journal_after(0))
    store.close()
    assert [seq for seq, _, _ in entries[:3]] == [1, 4, 6]
    assert entries[-1][0] == 456
    assert len(entries) == 2 + 450 + 1


def test_outbox_sync_keeps_first_write_and_reports_pending(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    rows = [(f"k{i}", "c", b"{}", i) for i in range(450)]
    assert store.outbox_sync(rows, []) == [k for k, _, _, _ in rows]
    assert store.outbox_sync([], [f"k{i}" for i in range(0, 450, 2)]) == []
    store.outbox_mark(["k1"], "dead")
    again = store.outbox_sync([("k0", "c", b"{changed}", 0), ("k3", "c", b"{}", 3)], [])
    assert again == ["k3"]  # k0 was sent: a replay re-creating it is not queued
    assert store.outbox_count("sent") == 225
    assert store.outbox_count("dead") == 1
    assert store.outbox_count("pending") == 224
    pending = store.outbox_pending()
    assert [k for k, _, _ in pending[:2]] == ["k3", "k5"]  # k1 is dead, evens were sent
    assert pending[0][1] == b"{}"
    store.close()


def _journal_seqs(store: SqliteStore) -> list[int]:
    return [int(r[0]) for r in store.jdb.execute("SELECT seq FROM journal ORDER BY seq")]


def test_trim_deletes_the_checkpointed_and_expired_prefix_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    # seqs 1 (3 events, t=10), 4 (2, t=20), 6 (1, t=30), 7 (4, t=40), 11 (1, t=50)
    for t, n in ((10, 3), (20, 2), (30, 1), (40, 4), (50, 1)):
        store.append(t, [(n, b"[]")])
    assert store.trim_journal(upto_seq=8, before=45, page=2) == 3  # row 7 holds seq 10 > 8
    assert _journal_seqs(store) == [7, 11]
    assert store.trim_journal(upto_seq=100, before=45) == 1  # row 11 is not old enough
    assert _journal_seqs(store) == [11]
    assert store.trim_journal(upto_seq=100, before=10**6) == 1
    assert store.trim_journal(upto_seq=100, before=10**6) == 0
    store.close()


def test_a_journal_trimmed_to_nothing_continues_after_the_checkpoint(tmp_path: Path) -> None:
    """A quiet shop: every row checkpointed and past retention, the journal trimmed empty,
    then a restart. The next event's seq follows the stored positions; starting again at
    1 would make every known customer's next events look like ones its state holds
    (``Partition.apply`` skips those) and the replay after a crash start past them."""
    store = SqliteStore(tmp_path)
    for t, n in ((10, 3), (20, 2)):
        store.append(t, [(n, b"[]")])
    store.checkpoint([], [], {0: 5, 1: 4}, [])
    assert store.trim_journal(upto_seq=4, before=10**6) == 1  # seqs 1-3
    assert store.trim_journal(upto_seq=5, before=10**6) == 1  # seqs 4-5
    assert _journal_seqs(store) == []
    store.close()
    again = SqliteStore(tmp_path)
    assert again.append(30, [(1, b"[]")]) == 6
    again.close()


def test_trim_a_page_at_a_time(tmp_path: Path) -> None:
    """The runtime trims a page per call, so group commits run in between."""
    store = SqliteStore(tmp_path)
    for t in range(1, 8):
        store.append(t, [(1, b"[]")])
    assert store.trim_journal(upto_seq=5, before=100, page=2, pages=1) == 2
    assert _journal_seqs(store) == [3, 4, 5, 6, 7]
    assert store.trim_journal(upto_seq=5, before=100, page=2, pages=1) == 2
    assert store.trim_journal(upto_seq=5, before=100, page=2, pages=1) == 1  # seq 6 stays
    assert store.trim_journal(upto_seq=5, before=100, page=2, pages=1) == 0
    assert _journal_seqs(store) == [6, 7]
    store.close()


def test_trim_stops_at_a_row_the_clock_stamped_late(tmp_path: Path) -> None:
    """A clock stepping back leaves an older stamp after a newer one: the prefix ends at
    the newer one, so rows are kept longer, never deleted before their time."""
    store = SqliteStore(tmp_path)
    for t in (10, 90, 20):
        store.append(t, [(1, b"[]")])
    assert store.trim_journal(upto_seq=3, before=50) == 1
    assert _journal_seqs(store) == [2, 3]
    store.close()


def test_periodic_maintenance_reads_ranges_not_whole_tables(tmp_path: Path) -> None:
    """Run after every checkpoint on the threads that also commit ingest and the outbox:
    their cost must follow what they delete, not what the tables hold."""
    store = SqliteStore(tmp_path)
    plans = [
        " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))
        for db, sql, args in (
            (store.jdb, "DELETE FROM journal WHERE seq <= ?", (5,)),
            (store.db, "DELETE FROM outbox WHERE status = 'sent' AND cause_at < ?", (5,)),
        )
    ]
    store.close()
    assert "USING INTEGER PRIMARY KEY (rowid<?)" in plans[0], plans[0]
    assert "outbox_status_cause (status=? AND cause_at<?)" in plans[1], plans[1]


def _states(store: SqliteStore) -> dict[str, bytes]:
    return dict(store.sdb.execute("SELECT customer_id, body FROM states"))


def test_a_writer_commits_states_in_steps_and_positions_last(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.checkpoint([("old", b"o"), ("erased", b"e0")], [], {0: 5}, [])

    def chunks(fail_after: int | None) -> Iterator[list[tuple[str, bytes]]]:
        for i in range(5):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("writer killed")
            yield [(f"c{i}a", b"1"), ("erased", b"e1"), (f"c{i}b", b"1")]

    with pytest.raises(RuntimeError):  # dies in the third step: two committed
        write_snapshot(tmp_path, "FULL", [], ["old"], chunks(4), {0: 9}, ["erased"], 4)
    partial = _states(store)
    assert store.checkpoint_seqs() == {0: 5}  # a replay starts where it did
    assert "old" not in partial  # erasures from before the round: the first step
    assert partial["erased"] == b"e0"  # never re-created; the engine deleted its row itself
    assert sorted(partial) == ["c0a", "c0b", "c1a", "c1b", "c2a", "c2b", "c3a", "c3b", "erased"]

    assert write_snapshot(tmp_path, "FULL", [], [], chunks(None), {0: 9}, ["erased"], 4) == 10
    assert store.checkpoint_seqs() == {0: 9}
    assert sorted(_states(store)) == sorted(f"c{i}{s}" for i in range(5) for s in "ab")
    store.close()


def test_states_move_from_state_db_on_first_open(tmp_path: Path) -> None:
    """A data directory from before states.db: its checkpoint is moved, once."""
    from engine.embedded.storage.sqlite import SqliteStore
    from engine.testing import RuleKit
    from state.memory import MemoryStore

    kit = RuleKit.from_paths()
    kit.send("cart_item_added", "m1", {"product_id": "p1", "price": 30.0})
    mem = kit.driver.store
    assert isinstance(mem, MemoryStore)
    body = mem.row("m1")
    assert body is not None
    old = sqlite3.connect(tmp_path / "state.db")
    old.executescript(
        "CREATE TABLE states (customer_id TEXT PRIMARY KEY, body BLOB NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    old.execute("INSERT INTO states VALUES ('m1', ?)", (body,))
    old.execute("INSERT INTO meta VALUES ('checkpoint_seq:0', '7')")
    old.commit()
    old.close()
    for _ in range(2):  # the second open finds it moved already
        store = SqliteStore(tmp_path, "NORMAL")
        try:
            assert [st.customer_id for st in store.load_states()] == ["m1"]
            assert store.checkpoint_seqs() == {0: 7}
        finally:
            store.close()
    old = sqlite3.connect(tmp_path / "state.db")
    assert old.execute("SELECT COUNT(*) FROM states").fetchone() == (0,)
    old.close()
