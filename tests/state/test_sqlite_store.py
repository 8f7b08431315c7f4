"""SqliteStore's journal and outbox writes (multi-row statements): seqs stay consecutive
across transactions and restarts, and the outbox keeps first writes and settled keys."""

from __future__ import annotations

from pathlib import Path

from state.sqlite import SqliteStore


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
