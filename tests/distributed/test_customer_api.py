"""Customer read and erase on `nudge worker`: the ingest (`--http-port`) asks the worker
that owns the customer's partition through Kafka (engine/distributed/requests.py). The
shared cases `nudge run` passes (tests/support/customer_api.py) pass here too, same
bodies; an erase during a rebalance is answered (or 503 with Retry-After, then
answered on retry), and the erased customer does not come back from the changelog when
its partition moves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import ClientSession

from engine.distributed.topics import key_partition
from rules.ruleset import RECIPES_DIR
from tests.distributed.conftest import Cluster
from tests.distributed.test_failover import wait_owned
from tests.distributed.test_segments import until
from tests.support.customer_api import CustomerApi, customer_cases
from tests.support.servers import free_port
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

WRITE, ADMIN = "capi-write-token", "capi-admin-token"


async def test_customer_api_on_the_distributed_ingest(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        for f in c.rules_dir.iterdir():  # the stock recipes, as the `nudge run` case has
            f.unlink()
        for f in RECIPES_DIR.iterdir():
            if f.suffix == ".yaml":
                (c.rules_dir / f.name).write_text(f.read_text())
        port = free_port()
        c.start_worker("w1", "--http-port", str(port), "--data", str(c.tmp / "ingest"))
        c.start_worker("w2")
        assert c.partitions == 4
        url = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with ClientSession() as session:

            async def call(method: str, path: str) -> tuple[int, Any]:
                try:
                    async with session.request(method, url + path, headers=admin) as r:
                        return r.status, await r.json(content_type=None)
                except OSError:
                    return 0, None

            async def post(events: list[dict[str, Any]]) -> int:
                auth = {"Authorization": f"Bearer {WRITE}"}
                async with session.post(url + "/v1/events", json=events, headers=auth) as r:
                    return r.status

            async def served() -> bool:
                return (await call("GET", "/v1/customers/nobody"))[0] == 404

            await until("the ingest answering customer reads", served, c)
            await wait_owned(c, ["w1", "w2"])

            async def settled() -> None:
                async def all_there() -> bool:
                    for cid in ("c9", "c606", "c2", "k7"):
                        if (await call("GET", f"/v1/customers/{cid}"))[0] != 200:
                            return False
                    return True

                await until("the events processed", all_there, c)

            now = int(time.time() * 1000) - 60_000
            await customer_cases(CustomerApi(post, call, settled, now, journal=False))

            # erase with suppression: the id's later events are dropped at the ingest
            assert await post([_ev("sup1", now)]) == 202

            async def sup_there() -> bool:
                return (await call("GET", "/v1/customers/sup1"))[0] == 200

            await until("sup1 processed", sup_there, c)
            status, body = await call("DELETE", "/v1/customers/sup1?suppress=true")
            assert status == 200, body
            assert body["erased"]["suppressed"] is True
            assert await post([_ev("sup1", now + 5, "p2"), _ev("marker", now + 5)]) == 202

            async def marker_there() -> bool:
                return (await call("GET", "/v1/customers/marker"))[0] == 200

            await until("the marker processed", marker_there, c)
            assert (await call("GET", "/v1/customers/sup1"))[0] == 404
            async with session.get(url + "/metrics") as r:
                text = await r.text()
            assert "nudge_events_suppressed_total 1.0" in text

            # erase during a rebalance: the worker owning the customer dies just before
            # the erase; the request waits in its partition for the next owner
            owned = c.stats("w2")["engine"]["partitions"]
            cid = next(
                f"c{i}" for i in range(7, 500) if key_partition(f"c{i}".encode(), 4) in owned
            )
            assert await post([_ev(cid, now)]) == 202

            async def there() -> bool:
                return (await call("GET", f"/v1/customers/{cid}"))[0] == 200

            await until(f"{cid} processed", there, c)
            c.kill("w2")
            statuses = []
            for _ in range(30):  # 503 (Retry-After) while no owner answers: retry
                status, body = await call("DELETE", f"/v1/customers/{cid}")
                statuses.append(status)
                if status != 503:
                    break
                assert body["error"]["code"] == "not_ready"
                await asyncio.sleep(1)
            assert statuses[-1] == 200, statuses
            assert set(statuses) <= {200, 503}  # never a 500
            await wait_owned(c, ["w1"])
            assert (await call("GET", f"/v1/customers/{cid}"))[0] == 404
            print("erase during the rebalance:", statuses)

            # every worker replaced: the new one restores all from the changelog, where
            # the erase left a tombstone (c7 stays gone) and c2 is whole
            c.kill("w1")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            c.procs.clear()
            c.start_worker("w4", "--http-port", str(port), "--data", str(c.tmp / "ingest"))
            await until("the new worker answering", served, c)
            await wait_owned(c, ["w4"])
            assert (await call("GET", f"/v1/customers/{cid}"))[0] == 404
            assert (await call("GET", "/v1/customers/c2"))[0] == 200
            assert await post([_ev(cid, now + 1000, "again")]) == 202  # a new, empty one

            async def new_again() -> bool:
                status, body = await call("GET", f"/v1/customers/{cid}")
                return status == 200 and body["recently_viewed"] == ["again"]

            await until(f"{cid} as a new customer", new_again, c)
    finally:
        c.stop_all()
        await hook.stop()


def _ev(cid: str, at: int, product: str = "p1") -> dict[str, Any]:
    from engine.types import iso

    return {
        "event_id": f"ev-{cid}-{product}",
        "type": "product_viewed",
        "customer_id": cid,
        "timestamp": iso(at),
        "properties": {"product_id": product},
    }
