"""Checkpoints written by a forked child from a copy-on-write snapshot
(engine/embedded/snapshot.py): what lands in states.db, and a failing child."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

import engine.embedded.snapshot as snapshot
from state.customer import load
from tests.engine.embedded.conftest import Harness, product_views

pytestmark = pytest.mark.skipif(not snapshot.available(), reason="needs os.fork and prctl")


@pytest.fixture
def checkpoint_mode() -> str:
    return "fork"


def stored(data: Path) -> tuple[dict[str, int], dict[int, int]]:
    """customer id -> stored seq, partition -> stored replay position"""
    db = sqlite3.connect(data / "states.db")
    try:
        states = {
            str(r[0]): load(r[1]).seq for r in db.execute("SELECT customer_id, body FROM states")
        }
        seqs = {
            int(k.split(":")[1]): int(v)
            for k, v in db.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint_seq:%'")
        }
    finally:
        db.close()
    return states, seqs


async def test_child_writes_changed_states_and_positions(harness: Harness) -> None:
    rt = harness.runtime
    status, _ = await harness.post_events(product_views(300, "a"))
    assert status == 202
    await harness.settle()
    assert await rt.snapshot_checkpoint()
    states, seqs = stored(harness.data)
    assert {f"ac{i}" for i in range(300)} <= set(states)
    assert seqs == {p.index: p.last_seq for p in rt.parts}
    for p in rt.parts:
        assert not p.dirty
        for cid in list(states):
            st = p.store.get(cid) if rt.partition(cid) is p else None
            if st is not None:
                assert states[cid] == st.seq


async def test_failed_child_gives_the_customers_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = harness.runtime
    assert await rt.snapshot_checkpoint()  # whatever start-up changed
    before = stored(harness.data)

    # the writer the child execs fails (as on a full disk)
    monkeypatch.setattr(snapshot, "WRITER", [sys.executable, "-c", "raise SystemExit(3)"])
    status, _ = await harness.post_events(product_views(50, "b"))
    assert status == 202
    await harness.settle()
    assert not await rt.snapshot_checkpoint()
    assert stored(harness.data) == before  # the earlier checkpoint stands
    dirty = set().union(*(p.dirty for p in rt.parts))
    assert {f"bc{i}" for i in range(50)} <= dirty
    monkeypatch.undo()
    assert await rt.snapshot_checkpoint()
    states, _ = stored(harness.data)
    assert {f"bc{i}" for i in range(50)} <= set(states)


def test_states_move_from_state_db_on_first_open(tmp_path: Path) -> None:
    """A data directory from before states.db: its checkpoint is moved, once."""
    from engine.testing import RuleKit
    from state.memory import MemoryStore
    from state.sqlite import SqliteStore

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


async def test_stop_while_a_child_writes_kills_it_and_checkpoints_in_process(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import time

    rt = harness.runtime
    children: list[int] = []
    fork = snapshot.fork_snapshot

    def recording_fork(*args: Any, **kwargs: Any) -> snapshot.Snapshot:
        snap = fork(*args, **kwargs)
        children.append(snap.pid)
        return snap

    stuck = [sys.executable, "-c", "import time; time.sleep(60)"]  # the writer hangs
    monkeypatch.setattr(snapshot, "WRITER", stuck)
    monkeypatch.setattr("engine.embedded.runtime.fork_snapshot", recording_fork)
    status, _ = await harness.post_events(product_views(30, "s"))
    assert status == 202
    await harness.settle()
    while not children:  # the periodic checkpoint (every 0.2 s) forked a child
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await rt.stop()
    assert time.monotonic() - t0 < 20
    for pid in children:  # killed and reaped
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    states, seqs = stored(harness.data)
    assert {f"sc{i}" for i in range(30)} <= set(states)  # the final in-process checkpoint
    assert seqs == {p.index: p.last_seq for p in rt.parts}


@pytest.mark.parametrize("populate", [True, False])
async def test_after_the_handover_the_heap_is_writable_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, populate: bool
) -> None:
    """Once the child has exec'd its writer, the runtime lifts the fork's write protection
    in one call (engine/embedded/cow.py): writing every customer state afterwards takes
    almost no page faults, where without that call it takes one per page."""
    import resource

    import engine.embedded.runtime as runtime_module
    from engine.embedded.cow import populate_heap

    if populate and populate_heap() == 0:
        pytest.skip("MADV_POPULATE_WRITE is not supported here (Linux 5.14+)")
    if not populate:
        monkeypatch.setattr(runtime_module, "populate_heap", lambda: 0)
    rt = harness.runtime
    for chunk in range(5):  # 5,000 customers: more pages than noise
        status, _ = await harness.post_events(product_views(1000, f"h{chunk}"))
        assert status == 202
    await harness.settle()
    assert await rt.snapshot_checkpoint()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    states = [st for p in rt.parts for st in (p.store.get(c) for c in list(p.store._data))]
    for st in states:
        assert st is not None
        st.seq = st.seq + 0  # a write to the state's memory
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    if populate:
        assert faults < 100, faults
    else:
        assert faults > 200, faults
