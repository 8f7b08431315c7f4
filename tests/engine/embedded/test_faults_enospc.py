"""A full disk with ENOSPC injected at the stores' boundary (issue 21): for machines
where a tmpfs cannot be mounted (test_faults_disk.py needs root). The journal's append,
the outbox's writes, the dead-letter store's add and the storage probe raise what
SQLite and the OS raise on a full disk while ``full`` is set; every other part is real.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import engine.embedded.samplers as samplers
from engine.testing import START
from engine.types import iso
from tests.engine.embedded.conftest import Harness, running, webhook_sinks


class Disk:
    """Makes the wrapped calls fail as on a full disk while ``full``."""

    def __init__(self) -> None:
        self.full = False
        self.failed = 0

    def wrap(self, fn: Callable[..., Any], os_error: bool = False) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.full:
                self.failed += 1
                if os_error:
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise sqlite3.OperationalError("database or disk is full")
            return fn(*args, **kwargs)

        return call


def orders(first: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"o{i}",
            "type": "order_completed",
            "customer_id": f"c{i}",
            "timestamp": iso(START),
            "properties": {"order_id": f"o{i}", "total": 650.0},
        }
        for i in range(first, first + n)
    ]


async def post(h: Harness, events: list[dict[str, Any]]) -> tuple[int, Any, str | None]:
    async with h.session.post(
        h.url("/v1/events"), data=orjson.dumps(events), headers=h.auth()
    ) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def readyz(h: Harness) -> tuple[int, Any]:
    async with h.session.get(h.url("/readyz")) as r:
        return r.status, await r.json()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def half_refused(url: str) -> dict[str, Any]:
    """Customers c0..: even ones to the webhook, odd ones to a 404 (dead letters)."""
    return {
        "default": "hook",
        "sinks": {
            "hook": webhook_sinks(url)["sinks"]["hook"],
            "gone": {"type": "webhook", "url": url.replace("/hook", "/gone")},
        },
    }


async def test_injected_enospc_everywhere_then_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk()
    monkeypatch.setattr(samplers, "probe_write", disk.wrap(samplers.probe_write, True))
    async with running(tmp_path / "data", sinks=half_refused) as h:
        rt = h.runtime
        assert rt.store is not None
        rt.store.append = disk.wrap(rt.store.append)  # type: ignore[method-assign]
        rt.store.outbox_sync = disk.wrap(rt.store.outbox_sync)  # type: ignore[method-assign]
        rt.store.outbox_mark = disk.wrap(rt.store.outbox_mark)  # type: ignore[method-assign]
        rt.dead.add = disk.wrap(rt.dead.add)  # type: ignore[method-assign]

        def sink_for(action: Any) -> Any:  # odd customers' actions are refused for good
            return rt.router.sinks["gone" if int(action.customer_id[1:]) % 2 else "hook"]

        rt.router.sink_for = sink_for  # type: ignore[method-assign]

        assert (await post(h, orders(0, 10)))[0] == 202
        disk.full = True
        # accepted just before: their actions are produced while the disk is full
        status, body, retry_after = await post(h, orders(10, 10))
        assert status == 507, body
        assert body["error"]["code"] == "insufficient_storage"
        assert retry_after == "5"
        status, why = await readyz(h)
        assert status == 503
        assert any(r.startswith("journal: disk full") for r in why["error"]["reasons"]), why
        await asyncio.sleep(1.5)  # probes fail; flushes and dead letters keep failing
        assert (await readyz(h))[0] == 503

        disk.full = False  # space returns: the probe notices, no request needed

        async def ready() -> bool:
            return (await readyz(h))[0] == 200

        await eventually(ready, "ready again")
        assert (await post(h, orders(10, 10)))[0] == 202  # the client's retry

        async def all_done() -> bool:
            return rt.outbox.pending == 0 and rt.dead.count() == 10

        await eventually(all_done, "every action delivered or dead-lettered")
        await h.settle()
        got = sorted(d.body["customer_id"] for d in h.hook.deliveries)
        assert got == sorted(f"c{i}" for i in range(0, 20, 2))  # once each
        dead = sorted(d.action.customer_id for d in rt.dead.list(100))
        assert dead == sorted(f"c{i}" for i in range(1, 20, 2))
        assert disk.failed > 0
        assert rt.health.faults == {}
