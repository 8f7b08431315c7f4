"""Dead letters carry a reason; a running engine takes replay requests; old files upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from connectors.deadletter import DeadLetterStore
from connectors.retry import RetryPolicy
from tests.connectors.conftest import ActionFactory
from tests.connectors.test_retry import ScriptedSink


def test_reasons_and_counts(tmp_path: Path, make_action: ActionFactory) -> None:
    store = DeadLetterStore(tmp_path / "d.db", now=lambda: 5)
    try:
        store.add(make_action("a"), "crm", "HTTP 400", 1, "rejected")
        store.add(make_action("b"), "crm", "deadline passed", 3, "expired")
        store.add(make_action("c"), "sms", "12h passed", 90, "horizon")
        assert store.counts() == {"rejected": 1, "expired": 1, "horizon": 1}
        assert {d.key: d.reason for d in store.list()} == {
            "a": "rejected",
            "b": "expired",
            "c": "horizon",
        }
    finally:
        store.close()


def test_replay_requests_skip_expired_unless_asked(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    store = DeadLetterStore(tmp_path / "d.db")
    try:
        store.add(make_action("a"), "crm", "x", 1, "rejected")
        store.add(make_action("b"), "crm", "x", 1, "expired")
        store.add(make_action("c"), "sms", "x", 1, "horizon")
        assert store.request_replay(sink_name="crm") == 1
        assert [d.key for d in store.take_replays()] == ["a"]
        assert store.request_replay(expired=True) == 2  # b and c; a is requested already
        assert [d.key for d in store.take_replays()] == ["a", "b", "c"]
        assert store.remove_many(["a", "b"]) == 2
        assert store.replay_requested() == 1
        store.add(make_action("c"), "sms", "failed again", 2, "horizon")  # clears its request
        assert store.replay_requested() == 0
    finally:
        store.close()


async def test_direct_replay_leaves_expired_letters(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    store = DeadLetterStore(tmp_path / "d.db")
    sink = ScriptedSink()
    try:
        store.add(make_action("a"), sink.name, "x", 1, "rejected")
        store.add(make_action("b"), sink.name, "x", 1, "expired")
        assert await store.replay(sink, RetryPolicy()) == (1, 0)
        assert [d.key for d in store.list()] == ["b"]
        assert await store.replay(sink, RetryPolicy(), expired=True) == (1, 0)
        assert store.count() == 0
    finally:
        store.close()


def test_a_file_from_before_reasons_is_upgraded(tmp_path: Path, make_action: ActionFactory) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE dead_letters (key TEXT PRIMARY KEY, sink TEXT NOT NULL, action BLOB NOT"
        " NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL, failed_at INTEGER NOT NULL)"
        " WITHOUT ROWID;"
    )
    body = b'{"rule_id":"r","rule_version":1,"customer_id":"c","channel":"email",'
    body += b'"template":"t","params":{},"variant":"a","idempotency_key":"k","fire_at":1}'
    db.execute("INSERT INTO dead_letters VALUES ('k', 'crm', ?, 'HTTP 500', 5, 9)", (body,))
    db.commit()
    db.close()
    store = DeadLetterStore(path)
    try:
        (letter,) = store.list()
        assert letter.reason == "failed"
        assert letter.error == "HTTP 500"
        assert store.request_replay() == 1
    finally:
        store.close()
