"""Erase marks (engine/distributed/erase_marks.py) on the worker's processing core, without
Kafka: a partition processed again from before an erase (a crash before the offset
commit, an offset reset) skips the erased customer's earlier events: no state, no action,
no changelog row comes back; other customers and the customer's events after the erase
are processed as usual. The same run with the marks left out of the restore shows what
they prevent. The real-Kafka proof is tests/distributed/test_erase_replay.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.distributed.erase_marks import MARK_PREFIX, EraseMarks, is_mark, mark_key
from engine.distributed.processing import PartitionEngine
from engine.distributed.requests import REQUEST_HEADER, CustomerRequest, request_record
from engine.types import Action, iso
from rules.ruleset import load_texts
from state.customer import CustomerState
from tests.support.traces import TIMING_FREE_RULES

T0 = 1_760_000_000_000


@dataclass
class Rec:
    partition: int
    offset: int
    timestamp: int
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Log:
    """What the flush produced: actions, and the changelog as key -> latest row."""

    actions: list[Action] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)  # keys of the rows written, in order
    table: dict[str, CustomerState | None] = field(default_factory=dict)

    async def flush(self, actions: Any, rows: Any, forwards: Any, segments: Any, erased: Any,
                    counts: Any = None) -> asyncio.Future[None]:  # fmt: skip
        for acts in actions.values():
            self.actions += acts
        for sts in rows.values():
            for st in sts:
                self.rows.append(st.customer_id)
                self.table[st.customer_id] = CustomerState.from_row(st.to_row())  # a copy
        for cids in erased.values():
            for cid in cids:
                self.table[cid] = None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def restored(self, keep_marks: bool = True) -> list[CustomerState]:
        return [
            st for st in self.table.values() if st is not None and (keep_marks or not is_mark(st))
        ]


def _event(i: int, cid: str, etype: str, props: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"m{i}",
            "type": etype,
            "customer_id": cid,
            "timestamp": iso(T0 + i),
            "properties": props,
        }
    )


def _trace(back: bool = False) -> list[Rec]:
    """x and y view products, x orders, x is erased, y views again; ``back``: then x
    comes back with one view."""
    recs: list[Rec] = []

    def add(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        recs.append(Rec(0, len(recs), T0 + len(recs), value, headers or []))

    for i, cid in enumerate(["x", "y", "x", "y"]):
        add(_event(i, cid, "product_viewed", {"product_id": f"p{i}"}))
    add(_event(9, "x", "order_completed", {"order_id": "o1", "total": 5.0}))
    erase = CustomerRequest("r1", "erase", "x")
    add(request_record(erase), [(REQUEST_HEADER, b"1")])
    add(_event(20, "y", "product_viewed", {"product_id": "p9"}))
    if back:
        add(_event(21, "x", "product_viewed", {"product_id": "again"}))
    return recs


def _engine(log: Log) -> PartitionEngine:
    rs = load_texts(sorted(TIMING_FREE_RULES.items()))
    return PartitionEngine(rs, 1, log.flush)


async def _restart(
    first_log: Log, recs: list[Rec], keep_marks: bool
) -> tuple[PartitionEngine, Log]:
    """A restart whose committed offset was before the erase: the rows as the changelog
    keeps them, the partition processed again from offset 2 (x's second view)."""
    log = Log()
    again = _engine(log)
    again.assign(0, first_log.restored(keep_marks))
    await again.process(recs[2:])
    return again, log


def _ps(log: Log, cid: str) -> list[Any]:
    return [a.params.get("p", a.template) for a in log.actions if a.customer_id == cid]


async def test_events_before_the_erase_stay_erased_on_reprocessing() -> None:
    recs = _trace()
    first_log = Log()
    first = _engine(first_log)
    first.assign(0, [])
    await first.process(recs[:6])  # through the erase
    await first.process(recs[6:])
    key = mark_key("x")
    assert first_log.table["x"] is None  # the tombstone
    mark = first_log.table[key]
    assert mark is not None
    assert mark.seq == 6
    assert key.startswith(MARK_PREFIX)
    assert "x" not in key
    assert _ps(first_log, "x") == ["p0", "p2", "thanks"]  # fired before the erase

    again, log = await _restart(first_log, recs, keep_marks=True)
    assert again.stats.erased_skipped == 2  # x's second view and its order
    assert _ps(log, "x") == []
    assert "x" not in log.rows
    assert again.parts[0].store.get("x") is None
    assert again.parts[0].store.get(key) is None  # marks are not customers
    assert key not in log.rows  # the mark restored is not written again
    assert again.stats.skipped == 2  # y's two, by the restored state's position
    assert _ps(log, "y") == []


async def test_without_the_marks_the_erased_customer_comes_back() -> None:
    """The control: the same restart with the marks dropped from the restore rebuilds x
    from its old events and fires its actions again (the request, processed again,
    erases it again; had the batch ended before it, its row would be written too)."""
    recs = _trace()
    first_log = Log()
    first = _engine(first_log)
    first.assign(0, [])
    await first.process(recs)
    again, log = await _restart(first_log, recs, keep_marks=False)
    assert again.stats.erased_skipped == 0
    assert _ps(log, "x") == ["p2", "thanks"]  # produced again


async def test_erased_and_back_in_one_batch_keeps_the_new_customer() -> None:
    """An erase and a later event of the same id in one batch: the new customer's row is
    written without a tombstone after it (which would delete it on restore)."""
    recs = _trace(back=True)
    first_log = Log()
    first = _engine(first_log)
    first.assign(0, [])
    await first.process(recs)
    restored = first_log.table["x"]
    assert restored is not None
    assert restored.viewed == ["again"]
    assert restored.orders == 0
    again, log = await _restart(first_log, recs, keep_marks=True)
    st = again.parts[0].store.get("x")
    assert st is not None
    assert st.viewed == ["again"]
    assert st.orders == 0
    assert _ps(log, "x") == []
    assert again.stats.erased_skipped == 2


def test_marks_expire_after_the_ttl_and_a_later_erase_moves_the_mark() -> None:
    marks = EraseMarks()
    marks.add("x", 10, T0)
    assert marks.hides("x", 9)
    assert not marks.hides("x", 10)
    assert not marks.hides("z", 3)
    marks.add("x", 10, T0 + 5)  # a reprocessed request: nothing new to write
    rows, _ = marks.take()
    assert [r.seq for r in rows] == [10]
    assert marks.take() == ([], [])
    marks.add("x", 30, T0 + 100)  # erased again later
    assert marks.hides("x", 29)
    assert marks.expire(T0 + 100 + 1_000, ttl=1_000) == 0
    assert marks.expire(T0 + 100 + 1_001, ttl=1_000) == 1
    assert not marks.hides("x", 29)
    assert len(marks) == 0
    assert marks.take()[1] == [mark_key("x")]
