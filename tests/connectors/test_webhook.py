"""WebhookSink + deliver against a real aiohttp server on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from connectors.deadletter import DeadLetterStore
from connectors.exceptions import SinkBackpressure, SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.sinks.webhook import WebhookSink
from tests.connectors.conftest import ActionFactory, FakeSleep, Receiver, Reply


async def test_success_posts_payload_with_idempotency_key(
    receiver: Receiver, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    action = make_action("key-123")
    sink = WebhookSink(receiver.url, headers={"Authorization": "Bearer t", "Idempotency-Key": "x"})
    await sink.start()
    try:
        attempts = await deliver(sink, action, RetryPolicy(), fake_sleep)
    finally:
        await sink.close()
    assert attempts == 1
    assert fake_sleep.delays == []
    [seen] = receiver.requests
    assert seen.headers["Idempotency-Key"] == "key-123"  # not overridable by config headers
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "Bearer t"
    assert seen.body == action.to_json_dict()
    assert seen.body["fire_at"] == "2023-11-14T22:13:20.123Z"


async def test_500_then_200_is_retried_with_the_same_key(
    receiver: Receiver, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    receiver.script = [Reply(500)]
    sink = WebhookSink(receiver.url)
    policy = RetryPolicy(base_delay=0.5)
    try:
        assert await deliver(sink, make_action("k"), policy, fake_sleep) == 2
    finally:
        await sink.close()
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == ["k", "k"]
    [delay] = fake_sleep.delays
    assert 0 <= delay <= 0.5


async def test_429_retry_after_is_honoured(
    receiver: Receiver, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    receiver.script = [Reply(429, {"Retry-After": "7"}), Reply(503, {"Retry-After": "2"})]
    sink = WebhookSink(receiver.url)
    try:
        assert await deliver(sink, make_action(), RetryPolicy(), fake_sleep) == 3
    finally:
        await sink.close()
    assert fake_sleep.delays == [7.0, 2.0]


async def test_429_is_backpressure_on_a_single_send(
    receiver: Receiver, make_action: ActionFactory
) -> None:
    receiver.script = [Reply(429, {"Retry-After": "1.5"})]
    sink = WebhookSink(receiver.url)
    try:
        with pytest.raises(SinkBackpressure) as info:
            await sink.send(make_action())
    finally:
        await sink.close()
    assert info.value.retry_after == 1.5
    assert info.value.status == 429
    assert info.value.retryable


async def test_400_is_permanent_and_not_retried(
    receiver: Receiver, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    receiver.script = [Reply(400)]
    sink = WebhookSink(receiver.url)
    try:
        with pytest.raises(SinkError) as info:
            await deliver(sink, make_action(), RetryPolicy(), fake_sleep)
    finally:
        await sink.close()
    assert not info.value.retryable
    assert info.value.status == 400
    assert info.value.attempts == 1
    assert "HTTP 400" in str(info.value)
    assert len(receiver.requests) == 1
    assert fake_sleep.delays == []


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (425, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (301, False),
        (400, False),
        (401, False),
        (404, False),
        (409, True),  # Conflict: retried (issue 19: other 4xx are permanent)
        (422, False),
    ],
)
async def test_status_classification(
    receiver: Receiver, make_action: ActionFactory, status: int, retryable: bool
) -> None:
    receiver.script = [Reply(status, {"Location": receiver.url} if status == 301 else {})]
    sink = WebhookSink(receiver.url)
    try:
        with pytest.raises(SinkError) as info:
            await sink.send(make_action())
    finally:
        await sink.close()
    assert type(info.value) is SinkError  # no Retry-After: not backpressure
    assert info.value.retryable is retryable
    assert info.value.status == status


async def test_timeout_is_retried(
    receiver: Receiver, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    receiver.script = [Reply(stall=60.0)]  # released at teardown
    sink = WebhookSink(receiver.url, timeout=0.3)
    try:
        assert await deliver(sink, make_action(), RetryPolicy(), fake_sleep) == 2
    finally:
        await sink.close()
    assert len(receiver.requests) == 2
    assert len(fake_sleep.delays) == 1


async def test_connection_refused_is_retryable(make_action: ActionFactory) -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        sink = WebhookSink(f"http://127.0.0.1:{port}/hook", timeout=2.0)
        try:
            with pytest.raises(SinkError) as info:
                await sink.send(make_action())
        finally:
            await sink.close()
    assert info.value.retryable
    assert info.value.status is None


async def test_dead_letter_after_max_attempts_then_replay(
    receiver: Receiver, make_action: ActionFactory, fake_sleep: FakeSleep, tmp_path: Path
) -> None:
    receiver.script = [Reply(500), Reply(502), Reply(503)]
    sink = WebhookSink(receiver.url, max_attempts=3, name="crm")
    store = DeadLetterStore(tmp_path / "dead.db")
    action = make_action("dl-1")
    try:
        with pytest.raises(SinkError) as info:
            await deliver(sink, action, sink.policy, fake_sleep)
        err = info.value
        assert not err.retryable
        assert err.attempts == 3
        assert isinstance(err.__cause__, SinkError)
        assert err.__cause__.status == 503
        store.add(action, sink.name, str(err), err.attempts)
        assert store.count() == 1
        assert len(fake_sleep.delays) == 2

        # the receiver is healthy again (script exhausted: 200s)
        assert await store.replay(sink, sink.policy, sleep=fake_sleep) == (1, 0)
        assert store.count() == 0
    finally:
        await sink.close()
        store.close()
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == ["dl-1"] * 4
    assert receiver.requests[-1].body == action.to_json_dict()


async def test_given_session_is_used_and_left_open(
    receiver: Receiver, make_action: ActionFactory
) -> None:
    async with aiohttp.ClientSession() as session:
        sink = WebhookSink(receiver.url, session=session)
        await sink.start()
        await sink.send(make_action())
        await sink.close()
        assert not session.closed
    assert len(receiver.requests) == 1


async def test_send_before_start_opens_a_session(
    receiver: Receiver, make_action: ActionFactory
) -> None:
    sink = WebhookSink(receiver.url)
    try:
        await sink.send(make_action())
    finally:
        await sink.close()
    await sink.close()  # idempotent
    assert len(receiver.requests) == 1


def test_repr_hides_headers_and_query() -> None:
    sink = WebhookSink("https://crm.example/h?token=secret", headers={"Authorization": "x"})
    assert "secret" not in repr(sink)
    assert "Authorization" not in repr(sink)
