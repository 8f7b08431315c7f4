"""`nudge run` under faults (issue 21): supervised background tasks, the dead-letter
store failing under the delivery tasks, malformed Authorization headers, long URLs.

Real components throughout: the runtime behind real HTTP on loopback (conftest), a
real webhook receiver, SQLite stores. Restart backoffs are real (0.1 s doubling); the
tests poll for outcomes with generous deadlines and never assert on speed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.embedded.supervise import Supervisor
from engine.metrics import Metrics
from engine.testing import START
from engine.types import iso
from tests.engine.embedded.conftest import Harness, running, webhook_sinks


def order(i: int, cid: str) -> dict[str, Any]:
    """An order that makes ``vip-segment`` send one webhook action for ``cid``."""
    return {
        "event_id": f"o{i}",
        "type": "order_completed",
        "customer_id": cid,
        "timestamp": iso(START),
        "properties": {"order_id": f"o{i}", "total": 650.0},
    }


async def metric(h: Harness, name: str, **labels: str) -> float:
    async with h.session.get(h.url("/metrics")) as r:
        text = await r.text()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def readyz(h: Harness) -> tuple[int, dict[str, Any]]:
    async with h.session.get(h.url("/readyz")) as r:
        return r.status, await r.json()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until true (a deadline against hangs, not a speed assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def refusing_sinks(url: str) -> dict[str, Any]:
    """Every action to a webhook answering 404: refused for good, dead-lettered."""
    return webhook_sinks(url.replace("/hook", "/gone"))


async def test_dead_letter_store_killed_under_delivery_task_restarts(tmp_path: Path) -> None:
    async with running(tmp_path / "data", sinks=refusing_sinks) as h:
        rt = h.runtime
        assert (await h.post_events(order(0, "c0")))[0] == 202
        await until(lambda: _dead(h, 1), "the first dead letter")

        rt.dead.close()  # the delivery tasks' store dies mid-run
        status, body = await h.post_events([order(i, f"c{i}") for i in range(1, 6)])
        assert status == 202, body

        async def failing() -> bool:
            return await metric(h, "nudge_task_failures_total", task="deliver") >= 1

        await until(failing, "a delivery task failure counted")
        # the supervisor restarts it with backoff; while down, /readyz names it
        seen: list[str] = []

        async def unready() -> bool:
            status, body = await readyz(h)
            if status == 503:
                seen.extend(body["error"]["reasons"])
            return status == 503 and any("deliver-" in r for r in body["error"]["reasons"])

        await until(unready, "/readyz naming a delivery task")
        assert any("closed database" in r for r in seen), seen
        # the five actions are kept, pending: none counted dead-lettered, none lost
        assert rt.outbox.pending == 5
        assert len(rt.outbox.graves) >= 1
        assert await metric(h, "nudge_actions_total", outcome="dead_lettered") == 1

        rt.dead.reopen()  # the store is back: the restarted tasks write the kept letters
        await until(lambda: _dead(h, 6), "the five kept dead letters written")
        await h.settle()

        async def ready() -> bool:
            return (await readyz(h))[0] == 200

        await until(ready, "/readyz ready again")
        assert await metric(h, "nudge_actions_total", outcome="dead_lettered") == 6
        keys = {d.action.customer_id for d in rt.dead.list(100)}
        assert keys == {f"c{i}" for i in range(6)}
        assert rt.supervisor.failures.get("checkpoint", 0) == 0  # only the deliverers fell
        # delivery goes on in the same process: one more dead letter, no restart needed
        assert (await h.post_events(order(9, "c9")))[0] == 202
        await until(lambda: _dead(h, 7), "a dead letter after the recovery")


async def _dead(h: Harness, n: int) -> bool:
    count: int = h.runtime.dead.count()
    return count == n


async def test_supervisor_restarts_with_backoff_and_counts() -> None:
    metrics = Metrics()
    sup = Supervisor(metrics, first=0.01, cap=0.05)
    runs = 0
    release = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"boom {runs}")
        await release.wait()  # the fourth run survives until released, then ends

    task = sup.spawn("flaky-1", flaky, kind="flaky")
    while runs < 4:
        await asyncio.sleep(0.005)
    assert sup.unhealthy() == []  # running again
    assert sup.failures["flaky-1"] == 3
    count = metrics.task_failures.labels("flaky")._value.get()
    assert count == 3
    release.set()
    await task  # a body that returns ends its task for good
    assert runs == 4


async def test_supervisor_vital_task_down_is_unhealthy_and_cancel_is_no_failure() -> None:
    metrics = Metrics()
    sup = Supervisor(metrics, first=30.0)  # stays down: the backoff outlasts the test

    async def broken() -> None:
        raise OSError(28, "No space left on device")

    async def idle() -> None:
        await asyncio.Event().wait()

    sup.spawn("vital", broken)
    sup.spawn("minor", broken, vital=False)
    sup.spawn("idle", idle)
    while len(sup.down) < 2:
        await asyncio.sleep(0.005)
    assert sup.unhealthy() == ["vital: OSError: [Errno 28] No space left on device"]
    await sup.cancel()
    assert sup.down == {}
    assert "idle" not in sup.failures


async def test_partition_task_failure_skips_only_the_failing_event(harness: Harness) -> None:
    """A partition loop that raises is restarted; the events after the failing one in
    its slice are processed (kept queued), the failing one is skipped and logged."""
    rt = harness.runtime
    part = rt.partition("boom")
    real = part.apply
    calls: list[str] = []

    def apply(seq: int, accepted_at: int, ev: Any) -> Any:
        calls.append(ev.customer_id)
        if ev.event_id == "o1":
            raise RuntimeError("a bug in the core")
        return real(seq, accepted_at, ev)

    part.apply = apply  # type: ignore[method-assign,assignment]
    events = [order(i, "boom") for i in range(3)]
    assert (await harness.post_events(events))[0] == 202
    await harness.settle()
    assert rt.supervisor.failures.get(f"part-{part.index}") == 1
    assert calls == ["boom", "boom", "boom"]
    assert rt.queued == 0


@pytest.mark.parametrize(
    "header",
    [
        "Bearer \u00e9t\u00e9",  # non-ASCII token
        "Bearer \U0001f600",
        "Basic \u00e9\u00e9\u00e9=",  # non-ASCII base64
        "Basic !!!notbase64",
        "Basic " + "w6k=",  # base64 of non-UTF-8? (valid UTF-8 'é': still no such token)
        "Bearer",
        "Bearer ",
        "Token abc",
        "bearer",
        "\u00e9",
        " ",
    ],
)
async def test_malformed_authorization_is_401(harness: Harness, header: str) -> None:
    data = orjson.dumps([order(0, "c0")])
    async with harness.session.post(
        harness.url("/v1/events"),
        data=data,
        headers={"Authorization": header.encode("utf-8").decode("latin-1")},
    ) as r:
        assert r.status == 401, await r.text()
        body = await r.json()
    assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(harness: Harness, scheme: str) -> None:
    async with harness.session.get(
        harness.url("/v1/rules"), headers={"Authorization": f"{scheme} {harness.tokens.admin}"}
    ) as r:
        assert r.status == 200, await r.text()


async def test_long_url_gets_json_error(tmp_path: Path) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from engine.embedded.server import HTTP_LIMITS
    from engine.http.app import create_app
    from engine.http.auth import Tokens

    async with running(tmp_path / "data") as h:
        tokens, _, _ = Tokens.load_or_create(h.data)
        app: web.Application = create_app(h.runtime, tokens, Metrics())
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**HTTP_LIMITS)  # as nudge run's runner
        try:
            url = str(server.make_url("/v1/customers/" + "x" * 10_000))
            async with h.session.get(url, headers=h.auth("admin")) as r:
                assert r.status == 414
                assert r.content_type == "application/json"
                body = await r.json()
            assert body["error"]["code"] == "uri_too_long"
        finally:
            await server.close()


async def test_second_runtime_on_a_locked_data_dir_refuses(harness: Harness) -> None:
    """In one process too: the lock is per open file, not per process."""
    import os

    from engine.embedded.exceptions import DataDirLocked
    from engine.embedded.runtime import Runtime, RuntimeConfig

    def files() -> list[str]:  # the first one's spools come and go by themselves
        return sorted(p.name for p in harness.data.iterdir() if p.suffix != ".spool")

    before = files()
    second = Runtime(RuntimeConfig(data_dir=harness.data), Metrics())
    with pytest.raises(DataDirLocked) as info:
        await second.start()
    assert info.value.pid == os.getpid()
    assert str(harness.data) in str(info.value)
    assert second.store is None
    assert files() == before
    assert (await harness.post_events(order(1, "c1")))[0] == 202
    assert (await readyz(harness))[0] == 200


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (sqlite3.OperationalError("database or disk is full"), 28),
        (OSError(28, "No space left on device"), 28),
        (sqlite3.OperationalError("disk I/O error"), 5),
    ],
)
def test_checkpoint_writer_exit_code_names_the_storage_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, code: int
) -> None:
    """The spool writer's exit status tells the engine a full disk (28) or an I/O error
    (5) from a bug; the spool is removed either way (the states go in the next one)."""
    from engine.embedded import spool

    path = tmp_path / "checkpoint-1.spool"
    with spool.SpoolWriter(path) as out:
        out.rows([("c1", b"state")])
        out.trailer({0: 1}, [], [])

    def full(*args: Any) -> None:
        raise error

    monkeypatch.setattr(spool, "write_snapshot", full)
    assert spool.main([str(tmp_path), "NORMAL", str(path)]) == code
    assert not path.exists()
