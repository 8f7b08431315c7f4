"""Paced checkpoints (engine/embedded/paced.py): states packed a slice at a time on the
loop, committed by a spawned writer; what lands in states.db, a failing writer, an
erasure while the round packs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from typing import Any

import pytest

from engine.embedded.paced import PacedRound
from engine.embedded.queues import PartitionQueues
from engine.embedded.spool import SpoolWriter
from engine.testing import START, make_event
from engine.types import Event, iso
from state.analytics import is_pending
from tests.engine.embedded.conftest import Harness, product_views, stored


@pytest.fixture
def checkpoint_interval() -> float:
    return 3600.0  # no periodic checkpoint: each test runs its rounds itself


async def many_views(harness: Harness, n: int, prefix: str) -> None:
    """``n`` customers (over several requests): at 50 states per slice and a loop turn
    between slices, a round over them lasts some ``n / 5`` milliseconds."""
    for i in range(0, n, 500):
        batch = product_views(min(500, n - i), f"{prefix}{i // 500}-")
        status, _ = await harness.post_events(batch)
        assert status == 202
    await harness.settle()


async def test_round_writes_changed_states_and_positions(harness: Harness) -> None:
    rt = harness.runtime
    status, _ = await harness.post_events(product_views(300, "a"))
    assert status == 202
    await harness.settle()
    seqs = {p.index: p.position for p in rt.parts}
    assert await rt.paced_checkpoint()
    states, stored_seqs = stored(harness.data)
    assert {f"ac{i}" for i in range(300)} <= set(states)
    assert stored_seqs == seqs
    for cid, seq in states.items():
        st = rt.partition(cid).store.get(cid)
        assert st is not None
        assert st.seq == seq
    assert not any(p.dirty for p in rt.parts)
    assert not list(harness.data.glob("*.spool"))  # the writer removed it


async def test_events_during_the_round_go_into_the_next(harness: Harness) -> None:
    """The round's positions are those at its start; a customer changed while it packs
    is changed again for the next round, so a replay from those positions misses
    nothing."""
    rt = harness.runtime
    await many_views(harness, 1500, "b")
    start = {p.index: p.position for p in rt.parts}
    task = asyncio.create_task(rt.paced_checkpoint())
    await asyncio.sleep(0.05)
    status, _ = await harness.post_events(product_views(20, "late"))
    assert status == 202
    await harness.settle()
    assert not task.done()  # all of that happened while the round packed
    assert await task
    _, stored_seqs = stored(harness.data)
    assert stored_seqs == start
    dirty = set().union(*(p.dirty for p in rt.parts))
    assert {f"latec{i}" for i in range(20)} <= dirty


async def test_failed_writer_gives_the_customers_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = harness.runtime
    assert await rt.paced_checkpoint()  # whatever start-up changed
    before = stored(harness.data)
    monkeypatch.setattr(
        "engine.embedded.paced.WRITER", [sys.executable, "-c", "raise SystemExit(3)"]
    )
    status, _ = await harness.post_events(product_views(50, "f"))
    assert status == 202
    await harness.settle()
    assert not await rt.paced_checkpoint()
    assert stored(harness.data) == before  # the earlier checkpoint stands
    assert not list(harness.data.glob("*.spool"))
    dirty = set().union(*(p.dirty for p in rt.parts))
    assert {f"fc{i}" for i in range(50)} <= dirty
    monkeypatch.undo()
    assert await rt.paced_checkpoint()
    states, _ = stored(harness.data)
    assert {f"fc{i}" for i in range(50)} <= set(states)


async def test_a_customer_erased_after_being_packed_is_not_written(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure comes while the round packs, after the customer's state went into the
    spool: the writer deletes it after the states."""
    rt = harness.runtime
    status, _ = await harness.post_events(product_views(40, "e"))
    assert status == 202
    await harness.settle()
    victim = "ec7"
    part = rt.partition(victim)
    row = part.store.row
    erasing: list[asyncio.Task[Any]] = []

    def packing(cid: str) -> bytes | None:
        body = row(cid)
        if cid == victim:  # packed: erase it from the next loop turn on
            erasing.append(asyncio.ensure_future(rt.erase(victim)))
        return body

    monkeypatch.setattr(part.store, "row", packing)
    assert await rt.paced_checkpoint()
    assert erasing
    erased = await erasing[0]
    assert erased["state"] is True
    states, _ = stored(harness.data)
    assert victim not in states
    assert {f"ec{i}" for i in range(40)} - {victim} <= set(states)


async def test_stop_during_a_round_cancels_it_and_checkpoints_in_process(
    harness: Harness,
) -> None:
    rt = harness.runtime
    await many_views(harness, 1500, "s")
    task = asyncio.create_task(rt.paced_checkpoint())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not list(harness.data.glob("*.spool"))
    await rt.stop()
    states, seqs = stored(harness.data)
    assert len([cid for cid in states if cid.startswith("s")]) == 1500
    assert seqs == {p.index: p.position for p in rt.parts}


@pytest.mark.parametrize("checkpoint_interval", [0.2])  # the runtime's own rounds
async def test_stop_while_the_writer_hangs_kills_it_and_checkpoints_in_process(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = harness.runtime
    # the writer records its pid beside the spool, then hangs
    hang = (
        "import os, sys, time; "
        "open(sys.argv[3] + '.pid', 'w').write(str(os.getpid())); time.sleep(60)"
    )
    monkeypatch.setattr("engine.embedded.paced.WRITER", [sys.executable, "-c", hang])
    status, _ = await harness.post_events(product_views(30, "h"))
    assert status == 202
    await harness.settle()
    while not (pids := list(harness.data.glob("*.spool.pid"))) or not pids[0].read_text():
        await asyncio.sleep(0.02)  # a round packed and spawned its writer
    writer = int(pids[0].read_text())
    t0 = time.monotonic()
    await rt.stop()
    assert time.monotonic() - t0 < 20
    with pytest.raises(ChildProcessError):  # killed and reaped
        os.waitpid(writer, os.WNOHANG)
    states, seqs = stored(harness.data)
    assert {f"hc{i}" for i in range(30)} <= set(states)  # the final in-process checkpoint
    assert seqs == {p.index: p.position for p in rt.parts}


def outbox_keys(harness: Harness) -> set[str]:
    db = sqlite3.connect(harness.data / "state.db")
    try:
        return {str(r[0]) for r in db.execute("SELECT key FROM outbox")}
    finally:
        db.close()


def vip_order(cid: str) -> dict[str, Any]:
    """An order that fires the stock vip-segment rule at once (one webhook action)."""
    return {
        "event_id": f"o-{cid}",
        "type": "order_completed",
        "customer_id": cid,
        "timestamp": iso(START),
        "properties": {"order_id": f"o-{cid}", "total": 650.0},
    }


async def test_actions_are_committed_before_the_states_that_include_them(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Normally the outbox's own flush commits them before the writer starts (the
    writer then never opens state.db); if that flush fails, the writer commits them
    from the spool's trailer, before the states."""
    rt = harness.runtime
    failing: list[int] = []

    async def flush_fails() -> None:
        failing.append(1)
        raise RuntimeError("disk full")

    monkeypatch.setattr(rt.outbox, "flush", flush_fails)  # nothing reaches state.db
    status, _ = await harness.post_events([vip_order(f"v{i}") for i in range(5)])
    assert status == 202
    while rt.queued:
        await asyncio.sleep(0.01)
    keys = {a.idempotency_key for a, _ in rt.outbox.unpersisted()}
    assert len(keys) == 5
    assert not keys & outbox_keys(harness)
    assert await rt.paced_checkpoint()
    assert failing
    assert keys <= outbox_keys(harness)  # through the writer
    states, _ = stored(harness.data)
    assert {f"v{i}" for i in range(5)} <= set(states)

    monkeypatch.undo()
    status, _ = await harness.post_events([vip_order(f"w{i}") for i in range(5)])
    assert status == 202
    while rt.queued:
        await asyncio.sleep(0.01)
    assert await rt.paced_checkpoint()
    assert len(outbox_keys(harness)) == 10
    assert not rt.outbox.unpersisted()


async def test_slices_are_capped_when_many_customers_changed(harness: Harness) -> None:
    """More changed customers than the spread allows at the cap: the round takes longer
    rather than packing bigger slices."""
    rt = harness.runtime
    await many_views(harness, 1500, "m")
    rnd = PacedRound(
        rt.parts, harness.data / "checkpoint-test.spool", spread=0.01, tick=0.001, max_slice=60
    )
    slices: list[int] = []
    write = SpoolWriter.rows

    def counting(self: SpoolWriter, rows: list[tuple[str, bytes]]) -> None:
        slices.append(sum(1 for r in rows if not is_pending(r[0])))  # states, not counts
        write(self, rows)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SpoolWriter, "rows", counting)
        await rnd.pack(rt.outbox.persist_all)
    assert rnd.states >= 1500
    assert max(slices) == 60
    rnd.give_back()


@pytest.mark.parametrize(("checkpoint_mode", "checkpoint_interval"), [("inline", 0.2)])
async def test_inline_mode_checkpoints_through_the_engines_own_thread(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other mode: no writer process (its program here would fail), states land."""
    monkeypatch.setattr(
        "engine.embedded.paced.WRITER", [sys.executable, "-c", "raise SystemExit(3)"]
    )
    rt = harness.runtime
    status, _ = await harness.post_events(product_views(40, "i"))
    assert status == 202
    await harness.settle()
    for _ in range(200):
        states, seqs = stored(harness.data)
        if {f"ic{i}" for i in range(40)} <= set(states):
            break
        await asyncio.sleep(0.05)
    assert {f"ic{i}" for i in range(40)} <= set(states)
    assert not list(harness.data.glob("*.spool"))
    assert set(seqs) == {p.index for p in rt.parts}


async def test_packing_waits_between_slices_until_no_event_is_queued(harness: Harness) -> None:
    """The packing is background work: after each slice's tick it waits for the
    partitions' queues to empty (bounded), so the events' slices go first. The runtime's
    wait returns at once with nothing queued, once the partitions applied what was
    queued, and after its bound when they never do."""
    rt = harness.runtime
    await asyncio.wait_for(rt.events_drained(), 5)  # nothing queued
    await many_views(harness, 300, "w")
    events = [_view(f"w-late{i}") for i in range(40)]
    rt.queues.deliver(10**9, START, events)  # the partitions' loops apply them
    assert rt.queued == 40
    await asyncio.wait_for(rt.events_drained(), 30)
    assert rt.queued == 0

    queued_then: list[int] = []

    async def between() -> None:
        queued_then.append(rt.queued)
        await rt.events_drained()

    rnd = PacedRound(
        rt.parts,
        harness.data / "checkpoint-test.spool",
        spread=0.01,
        tick=0.001,
        max_slice=50,
        between=between,
    )
    await rnd.pack(rt.outbox.persist_all)
    assert len(queued_then) >= 300 // 50  # once after every slice
    rnd.give_back()

    idle = PartitionQueues(
        rt.clock, rt.metrics, rt.admission, lambda: 0, slice_events=100, slice_seconds=0.002
    )
    idle.attach(rt.parts)
    idle.deliver(1, START, [_view("never-applied")])  # no loop runs these queues
    await asyncio.wait_for(idle.drained(0.05), 30)  # returns at its bound
    assert idle.queued == 1


def _view(customer_id: str) -> Event:
    return make_event("product_viewed", customer_id, START, {"product_id": "p1"})
