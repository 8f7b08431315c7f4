"""`nudge worker`: open flows keep the rule version they entered with across a deploy, a
worker replaced (state from the changelog, kept versions from the Redis rule record) and
a rollback through the ingest's `POST /v1/rules/rollback` (issue #22 item 7; docs/rules.md,
"Deploys and open flows"). Real Kafka and Redis; waits of a few seconds of wall time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientSession

from engine.types import iso
from tests.distributed.conftest import Cluster
from tests.distributed.test_failover import wait_owned
from tests.support.servers import free_port
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

WRITE, ADMIN = "rv-write-token", "rv-admin-token"

V1 = """
id: visit
version: 1
trigger: {event: page_viewed}
steps:
  - wait: 20s
  - send: {channel: webhook, template: one}
"""

V2 = """
id: visit
version: 2
trigger: {event: page_viewed}
steps:
  - wait: 5s
  - send: {channel: webhook, template: intro}
  - wait: 5s
  - send: {channel: webhook, template: one}
"""


async def until(what: str, check: Callable[[], Awaitable[bool]], c: Cluster, t: float = 90) -> None:
    end = time.monotonic() + t
    while time.monotonic() < end:
        if await check():
            return
        for name, proc in c.procs.items():
            if name not in c.killed and proc.poll() is not None:
                raise AssertionError(f"worker {name} exited:\n{c.log_tail(name)}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{c.log_tail('w2')}")


def by_customer(hook: WebhookReceiver) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for d in sorted(hook.deliveries, key=lambda d: str(d.body["fire_at"])):
        out.setdefault(d.body["customer_id"], []).append(
            (d.body["template"], d.body["rule_version"])
        )
    return out


async def test_versions_survive_a_deploy_a_new_worker_and_a_rollback(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url, partitions=2)
        for f in c.rules_dir.iterdir():
            f.unlink()
        (c.rules_dir / "visit.yaml").write_text(V1)
        port = free_port()
        c.start_worker("w1", "--http-port", str(port), "--data", str(c.tmp / "ingest1"))
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with ClientSession() as session:
            url = f"http://127.0.0.1:{port}"

            async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                try:
                    async with session.request(method, url + path, json=body, headers=admin) as r:
                        return r.status, await r.json(content_type=None)
                except OSError:
                    return 0, None

            async def visit(cid: str) -> None:
                ev = {
                    "event_id": f"pv-{cid}",
                    "type": "page_viewed",
                    "customer_id": cid,
                    "timestamp": iso(int(time.time() * 1000)),
                    "properties": {},
                }
                auth = {"Authorization": f"Bearer {WRITE}"}
                async with session.post(url + "/v1/events", json=[ev], headers=auth) as r:
                    assert r.status == 202

                async def open_flow() -> bool:
                    status, body = await call("GET", f"/v1/customers/{cid}")
                    return status == 200 and bool(body["flows"])

                await until(f"{cid}'s flow open", open_flow, c)

            async def served() -> bool:
                return (await call("GET", "/v1/customers/nobody"))[0] == 404

            await until("the ingest answering", served, c)
            await wait_owned(c, ["w1"])
            await visit("old")  # enters version 1

            status, body = await call("PUT", "/v1/rules", {"files": {"visit.yaml": V2}})
            assert (status, body["version"]) == (200, 2), body

            async def on(name: str, version: int) -> bool:
                return bool(c.stats(name).get("engine", {}).get("rules_version") == version)

            await until("w1 on rule set 2", lambda: on("w1", 2), c)
            await visit("new")  # enters version 2

            # the worker replaced: state from the changelog, versions from Redis
            c.kill("w1")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            c.start_worker("w2", "--http-port", str(port), "--data", str(c.tmp / "ingest2"))
            await until("the new ingest answering", served, c)
            await wait_owned(c, ["w2"])

            async def old_sent() -> bool:
                return "old" in by_customer(hook)

            # due 20 s after it entered: fired by w2, on version 1 from the Redis record
            await until("old's send", old_sent, c)
            assert by_customer(hook)["old"] == [("one", 1)]

            status, body = await call("POST", "/v1/rules/rollback")
            assert status == 200, body
            assert body == {
                "version": 3,
                "rolled_back_to": 1,
                "previous": 2,
                "rules": 1,
                "warnings": [],
            }
            await until("w2 on rule set 3", lambda: on("w2", 3), c)
            await visit("after")  # enters version 1 again

            async def all_sent() -> bool:
                return len(hook.deliveries) >= 4

            await until("the four sends", all_sent, c)
            await asyncio.sleep(1.0)  # nothing more is due
        assert by_customer(hook) == {
            "old": [("one", 1)],  # version 2 at its index would have sent "intro"
            "new": [("intro", 2), ("one", 2)],
            "after": [("one", 1)],
        }
        assert "does not load" not in c.log_tail("w2", 100_000)
    finally:
        await hook.stop()
