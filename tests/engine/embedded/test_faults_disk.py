"""A full disk under a running engine (issue 21), on a real file system: the data
directory on a small tmpfs, filled mid-stream and freed again.

While full: ingest answers 507 with a JSON error and ``Retry-After`` (never 500),
``/readyz`` answers 503 saying the disk is full. Once space returns, with no restart and
no request needed, ``/readyz`` is 200 again, and in the end every acknowledged event's
action reaches the webhook exactly once; checkpoints resume.

Mounting needs root (``mount -t tmpfs``); where that is refused the test is skipped and
test_faults_enospc.py covers the same paths with ENOSPC injected at the OS boundary."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing import START
from engine.types import iso
from tests.engine.embedded.conftest import Harness, running, stored

pytestmark = pytest.mark.slow

PAD = "x" * 2000  # ~2 KB per event: the journal grows fast
BATCH = 50


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = path / "filler"
    with filler.open("wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 512):
            block = b"\0" * chunk
            try:
                while True:
                    fh.write(block)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())
    return filler


def orders(first: int, n: int) -> list[dict[str, Any]]:
    """Orders that make vip-segment send one webhook action per customer."""
    return [
        {
            "event_id": f"o{i}",
            "type": "order_completed",
            "customer_id": f"c{i}",
            "timestamp": iso(START),
            "properties": {"order_id": f"o{i}", "total": 650.0, "note": PAD},
        }
        for i in range(first, first + n)
    ]


async def post(h: Harness, events: list[dict[str, Any]]) -> tuple[int, Any, str | None]:
    import orjson

    async with h.session.post(
        h.url("/v1/events"), data=orjson.dumps(events), headers=h.auth()
    ) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def readyz(h: Harness) -> tuple[int, Any]:
    async with h.session.get(h.url("/readyz")) as r:
        return r.status, await r.json()


async def test_disk_full_mid_stream_then_freed(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "24m") as disk:
        async with running(disk / "data", checkpoint_interval=0.2) as h:
            acked: list[dict[str, Any]] = []
            refused: list[list[dict[str, Any]]] = []
            at = 0
            for _ in range(4):  # a healthy start
                batch = orders(at, BATCH)
                at += BATCH
                status, body, _ = await post(h, batch)
                assert status == 202, body
                acked += batch
            filler = fill(disk)

            # full: write until the journal refuses, and a while after
            statuses: list[int] = []
            unready: list[str] = []
            for _ in range(400):
                batch = orders(at, BATCH)
                at += BATCH
                status, body, retry_after = await post(h, batch)
                statuses.append(status)
                if status == 202:
                    acked += batch
                    continue
                assert status == 507, (status, body)
                assert body["error"]["code"] == "insufficient_storage"
                assert body["error"]["store"] == "journal"
                assert retry_after is not None
                assert int(retry_after) >= 1
                refused.append(batch)
                ready_status, ready_body = await readyz(h)
                if ready_status == 503:
                    unready += ready_body["error"]["reasons"]
                if len(refused) >= 5:
                    break
            assert len(refused) >= 5, f"never refused: {statuses[-10:]}"
            assert 500 not in statuses
            assert any("journal: disk full" in r for r in unready), unready
            await asyncio.sleep(0.5)  # checkpoints and outbox flushes fail meanwhile
            full_reasons = (await readyz(h))[1]

            filler.unlink()  # space returns: no restart, no request needed to notice

            async def ready() -> bool:
                return (await readyz(h))[0] == 200

            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            while not await ready():
                assert loop.time() < end, await readyz(h)
                await asyncio.sleep(0.05)

            # the clients retry what was refused; it is accepted now
            for batch in refused:
                status, body, _ = await post(h, batch)
                assert status == 202, body
                acked += batch
            expected = {e["customer_id"] for e in acked}
            end = loop.time() + 60
            while {d.body["customer_id"] for d in h.hook.deliveries} != expected:
                assert loop.time() < end, len(h.hook.deliveries)
                await asyncio.sleep(0.05)
            await h.settle()
            keys = h.hook.keys()
            assert len(keys) == len(set(keys)) == len(expected), "an action sent twice"
            # checkpoints resumed: every customer's state is stored
            end = loop.time() + 60
            while set(stored(h.data)[0]) != expected:
                assert loop.time() < end
                await asyncio.sleep(0.1)
            assert h.runtime.health.faults == {}
            assert "error" in full_reasons  # /readyz explained itself while full
