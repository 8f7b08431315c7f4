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


async def test_redact_reads_only_the_chunks_the_line_index_names(
    tmp_path: Path, make_action: ActionFactory
) -> None:
    """A file of several 1 MiB chunks: the customer's lines (one across a chunk boundary)
    are all redacted while only the chunks that may hold them are read. The index is
    built from the file when a sink opens it, kept as it appends, and not trusted once
    the file changed behind it (the whole file is searched then)."""
    from connectors.sinks import jsonl as jsonl_mod
    from connectors.sinks.jsonl_index import CHUNK, LineIndex

    path = tmp_path / "actions.jsonl"
    first = JsonlSink(path, fsync_every=0)
    for i in range(3000):  # written by an earlier process
        await first.send(make_action(f"k{i}", customer_id=f"o{i}"))
    await first.send(make_action("m0", customer_id="me"))
    await first.close()
    sink = JsonlSink(path, fsync_every=0)  # a restart: the index is built from the file
    n, mine = 3000, 1
    while path.stat().st_size < 4 * CHUNK:
        if path.stat().st_size > 2 * CHUNK - 300 and mine == 1:  # across the boundary
            await sink.send(make_action("m1", customer_id="me"))
            mine += 1
        await sink.send(make_action(f"k{n}", customer_id=f"o{n}"))
        n += 1
    await sink.send(make_action("m2", customer_id="me"))
    await sink.close()
    await sink.start()
    index = sink._index
    assert index is not None
    assert index.size == path.stat().st_size
    chunks = list(index.chunks("me"))
    assert 3 <= len(chunks) < 5  # those holding its lines (and any collision), not all
    blind = LineIndex()  # an index naming no chunk: nothing is read, nothing found
    blind.size = index.size
    assert jsonl_mod._redact_lines_of(path, "me", blind) == 0
    assert await sink.redact("me") == 3
    data = path.read_bytes()
    assert b'"customer_id":"me"' not in data
    assert len(read_jsonl_actions(path)) == n  # every other line whole
    await sink.close()
    # appended behind the sink's back: its index no longer describes the file
    with path.open("ab") as f:
        f.write(orjson.dumps(make_action("late", customer_id="me").to_json_dict()) + b"\n")
    assert jsonl_mod._redact_lines_of(path, "me", index) == 1
