"""JsonlSink and read_jsonl_actions: round trip, crash tail, concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from connectors.exceptions import ConnectorError, SinkError
from connectors.sinks.jsonl import JsonlSink, read_jsonl_actions
from tests.connectors.conftest import ActionFactory


async def test_round_trip(tmp_path: Path, make_action: ActionFactory) -> None:
    path = tmp_path / "out" / "actions.jsonl"
    actions = [make_action(f"k{i}", fire_at=1_700_000_000_000 + i * 37) for i in range(5)]
    sink = JsonlSink(path)
    await sink.start()
    for action in actions:
        await sink.send(action)
    await sink.close()
    assert read_jsonl_actions(path) == actions
    first = orjson.loads(path.read_bytes().split(b"\n")[0])
    assert first == actions[0].to_json_dict()


async def test_truncated_last_line_is_ignored_then_dropped_on_reopen(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    path = tmp_path / "actions.jsonl"
    sink = JsonlSink(path)
    await sink.send(make_action("a"))
    await sink.send(make_action("b"))
    await sink.close()
    with path.open("ab") as f:  # a crash in the middle of the third line
        f.write(b'{"fire_at":"2023-11-14T22:13:20.123Z","rule_id":"abandoned-ca')

    assert [a.idempotency_key for a in read_jsonl_actions(path)] == ["a", "b"]

    sink = JsonlSink(path)
    await sink.start()
    await sink.send(make_action("c"))
    await sink.close()
    assert path.read_bytes().endswith(b"\n")
    assert [a.idempotency_key for a in read_jsonl_actions(path)] == ["a", "b", "c"]


async def test_complete_but_unterminated_line_is_not_a_record(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    path = tmp_path / "actions.jsonl"
    path.write_bytes(orjson.dumps(make_action("x").to_json_dict()))  # no "\n"
    assert read_jsonl_actions(path) == []
    sink = JsonlSink(path)
    await sink.send(make_action("y"))
    await sink.close()
    assert [a.idempotency_key for a in read_jsonl_actions(path)] == ["y"]


async def test_concurrent_sends_write_whole_lines(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    path = tmp_path / "actions.jsonl"
    sink = JsonlSink(path, fsync_every=10)
    await sink.start()
    await asyncio.gather(*(sink.send(make_action(f"k{i}")) for i in range(200)))
    await sink.close()
    keys = [a.idempotency_key for a in read_jsonl_actions(path)]
    assert sorted(keys) == sorted(f"k{i}" for i in range(200))


async def test_no_fsync_cadence_still_writes_before_returning(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    path = tmp_path / "actions.jsonl"
    sink = JsonlSink(path, fsync_every=0)
    await sink.send(make_action("a"))
    assert [a.idempotency_key for a in read_jsonl_actions(path)] == ["a"]  # before close
    await sink.close()


def test_corrupt_middle_line_names_the_line(tmp_path: Path, make_action: ActionFactory) -> None:
    path = tmp_path / "actions.jsonl"
    good = orjson.dumps(make_action().to_json_dict())
    path.write_bytes(good + b"\n" + b"{oops\n" + good + b"\n")
    with pytest.raises(ConnectorError) as info:
        read_jsonl_actions(path)
    assert info.value.field == f"{path}:2"


async def test_unencodable_action_is_permanent(tmp_path: Path, make_action: ActionFactory) -> None:
    sink = JsonlSink(tmp_path / "a.jsonl")
    try:
        with pytest.raises(SinkError) as info:
            await sink.send(make_action(params={"when": object()}))
    finally:
        await sink.close()
    assert not info.value.retryable


async def test_unwritable_path_is_a_retryable_error(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = JsonlSink(blocker / "actions.jsonl")
    with pytest.raises(SinkError) as info:
        await sink.start()
    assert info.value.retryable
    await sink.close()


def test_negative_cadence_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError) as info:
        JsonlSink(tmp_path / "a.jsonl", fsync_every=-1)
    assert info.value.field == "fsync_every"


async def test_redact_blanks_the_customers_lines_in_place(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    """Erasure: the customer's lines become ``{}`` and spaces (same length, other lines
    untouched, readers skip them); an id that only prefixes another (c1 / c12) or appears in another
    customer's params is not taken for it; sends go on after."""
    path = tmp_path / "actions.jsonl"
    sink = JsonlSink(path)
    await sink.send(make_action("a", customer_id="c1", params={"email": "c1@example.com"}))
    await sink.send(make_action("b", customer_id="c12"))
    await sink.send(make_action("c", customer_id="c2", params={"ref": "c1"}))
    await sink.send(make_action("d", customer_id="c1"))
    before = path.read_bytes()
    assert await sink.redact("c1") == 2
    after = path.read_bytes()
    assert len(after) == len(before)
    assert b"c1@example.com" not in after
    assert b'"customer_id":"c1"' not in after
    assert [orjson.loads(x) for x in after.splitlines()][::3] == [{}, {}]  # still JSON lines
    assert [a.idempotency_key for a in read_jsonl_actions(path)] == ["b", "c"]
    assert await sink.redact("c1") == 0  # nothing left of it
    await sink.send(make_action("e", customer_id="c1"))  # a new customer under the id
    await sink.close()
    assert [a.idempotency_key for a in read_jsonl_actions(path)] == ["b", "c", "e"]
