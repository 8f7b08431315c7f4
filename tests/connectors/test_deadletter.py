"""DeadLetterStore on a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.deadletter import DeadLetterStore
from connectors.exceptions import SinkError
from connectors.retry import RetryPolicy
from engine.types import Action
from tests.connectors.conftest import ActionFactory, FakeSleep


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        self.ms += 1
        return self.ms


class FlakySink:
    """Refuses the keys in ``refuse`` (permanently), accepts the rest."""

    def __init__(self, name: str, refuse: set[str] | None = None) -> None:
        self.name = name
        self.refuse = refuse or set()
        self.sent: list[str] = []

    async def start(self) -> None:
        pass

    async def send(self, action: Action) -> None:
        self.sent.append(action.idempotency_key)
        if action.idempotency_key in self.refuse:
            raise SinkError("HTTP 400", retryable=False, status=400)

    async def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeadLetterStore]:
    s = DeadLetterStore(tmp_path / "dead.db", now=Clock())
    try:
        yield s
    finally:
        s.close()


def test_add_is_keyed_by_idempotency_key(
    store: DeadLetterStore, make_action: ActionFactory
) -> None:
    store.add(make_action("k1"), "crm", "HTTP 500", 5)
    store.add(make_action("k2"), "crm", "HTTP 502", 5)
    store.add(make_action("k1"), "crm", "HTTP 400", 7)
    assert store.count() == 2
    letters = store.list(10)
    assert [(d.key, d.error, d.attempts) for d in letters] == [
        ("k2", "HTTP 502", 5),
        ("k1", "HTTP 400", 7),  # updated: now the most recent failure
    ]
    assert letters[1].action == make_action("k1")
    assert letters[1].sink_name == "crm"


def test_list_limit_and_remove(store: DeadLetterStore, make_action: ActionFactory) -> None:
    for i in range(5):
        store.add(make_action(f"k{i}"), "crm", "e", 1)
    assert [d.key for d in store.list(2)] == ["k0", "k1"]
    assert store.remove("k0")
    assert not store.remove("k0")
    assert store.count() == 4
    assert [d.key for d in store.list(10, sink_name="other")] == []


def test_persists_in_wal_mode(tmp_path: Path, make_action: ActionFactory) -> None:
    path = tmp_path / "sub" / "dead.db"
    first = DeadLetterStore(path)
    first.add(make_action("k"), "crm", "e", 3)
    first.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    again = DeadLetterStore(path)
    try:
        assert [d.key for d in again.list()] == ["k"]
    finally:
        again.close()


async def test_replay_removes_delivered_and_keeps_failed(
    store: DeadLetterStore, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    for i in range(7):
        store.add(make_action(f"k{i}"), "crm", "HTTP 500", 5)
    store.add(make_action("other"), "file", "disk full", 5)
    sink = FlakySink("crm", refuse={"k3"})
    assert await store.replay(sink, RetryPolicy(), sleep=fake_sleep, batch=3) == (6, 1)
    assert sorted(sink.sent) == [f"k{i}" for i in range(7)]  # not the "file" letter
    [kept_crm] = store.list(sink_name="crm")
    assert kept_crm.key == "k3"
    assert kept_crm.attempts == 6
    assert "HTTP 400" in kept_crm.error
    assert store.count() == 2


async def test_replay_all_sinks(store: DeadLetterStore, make_action: ActionFactory) -> None:
    store.add(make_action("a"), "crm", "e", 1)
    store.add(make_action("b"), "file", "e", 1)
    sink = FlakySink("log")
    assert await store.replay(sink, RetryPolicy(), all_sinks=True) == (2, 0)
    assert store.count() == 0
