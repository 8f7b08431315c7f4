"""The console's customer page on the distributed runtime, in headless Chromium: a worker
with ``--http-port`` (the ingest) on the real Kafka and Redis; the timeline shows the
customer's events and actions newest first, from its partitions of the ``events`` and
``actions`` topics (another customer of the same partition left out), each action with
its delivery status from Redis; a customer erased and seen again shows only what came
after the erase. The consent history is the worker's view, as the export has it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from playwright.sync_api import Page, expect

from engine.types import iso
from tests.console.conftest import Watched
from tests.console.test_consent_page import consent_rows, export_rows
from tests.distributed.conftest import Cluster, cluster_factory  # noqa: F401  (a fixture)
from tests.support.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READ, WRITE, ADMIN = "tl-read-token", "tl-write-token", "tl-admin-token"


def _call(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, orjson.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def _until(what: str, cond: Any, c: Cluster, timeout: float = 90.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{c.log_tail('w1')}")


def _post(base: str, c: Cluster, events: list[dict[str, Any]]) -> None:
    _until("202", lambda: _call("POST", base + "/v1/events", WRITE, events)[0] == 202, c)


def _ev(i: int, etype: str, cid: str, at: int, **props: Any) -> dict[str, Any]:
    return {"event_id": f"tl{i}", "type": etype, "customer_id": cid, "timestamp": iso(at),
            "properties": props}  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _rows(page: Page, kind: str, col: int) -> list[str]:
    cells = page.get_by_test_id("timeline").locator(f"tr.tl-{kind} td:nth-child({col})")
    return cells.all_inner_texts()


def test_distributed_customer_timeline(
    cluster_factory: Any,  # noqa: F811
    watched: Watched,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("NUDGE_READ_TOKEN", READ)
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    c: Cluster = cluster_factory("http://127.0.0.1:9/unused", partitions=4)
    sent = tmp_path / "sent.jsonl"
    sink = {"type": "jsonl", "path": str(sent), "fsync_every": 1}
    c.sinks_file.write_text(json.dumps({"default": "file", "sinks": {"file": sink}}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    c.start_worker("w1", "--http-port", str(port), "--data", str(c.tmp / "in"))
    _until(
        "every partition owned",
        lambda: c.stats("w1").get("engine", {}).get("partitions") == list(range(c.partitions)),
        c,
    )
    # a neighbour in c1's partition, as the ingest's producer places them
    parts = list(range(c.partitions))
    part = DefaultPartitioner()
    home = part(b"c1", parts, parts)
    other = next(f"n{i}" for i in range(1000) if part(f"n{i}".encode(), parts, parts) == home)

    t = int(time.time() * 1000)
    _post(base, c, [_ev(1, "product_viewed", "c1", t, product_id="p1"),
                    _ev(2, "product_viewed", other, t, product_id="p-neighbour")])  # fmt: skip
    _post(base, c, [_ev(3, "cart_item_added", "c1", t + 1, product_id="p2", price=5.0)])
    _post(base, c, [_ev(4, "order_completed", "c1", t + 2, order_id="o1", total=12.0),
                    _ev(5, "product_viewed", "c3", t + 2, product_id="p3")])  # fmt: skip
    # c1: seen, later (1 s after the cart), thanks; the neighbour: seen; c3: seen
    _until("five actions delivered", lambda: len(_lines(sent)) == 5, c)
    # c3 erased, then seen again: a new, empty customer
    status, body = _call("DELETE", base + "/v1/customers/c3", ADMIN)
    assert status == 200, body
    assert body["erased"]["state"] is True
    _post(base, c, [_ev(6, "order_completed", "c3", t + 3, order_id="o3", total=20.0)])
    _until("six actions delivered", lambda: len(_lines(sent)) == 6, c)
    signup = _ev(7, "customer_signed_up", "c4", t, consent={"email": True, "sms": True})
    unsub = {**_ev(8, "email_unsubscribed", "c4", t + 5), "context": {"source": "sendgrid"}}
    _post(base, c, [signup])
    _post(base, c, [unsub])
    status, export = _until(
        "c4's export",
        lambda: (got := _call("GET", base + "/v1/customers/c4/export", ADMIN))[0] == 200 and got,
        c,
    )
    history = export["state"]["profile"]["consent_history"]
    assert [h["source"] for h in history] == ["storefront", "sendgrid"]

    page = watched.page
    page.goto(base + "/ui/")
    expect(page).to_have_url(base + "/ui/login")
    page.fill("#token", READ)
    page.click("form button")
    page.click("nav >> text=Customers")
    page.fill("#cid", "c1")
    page.click("form.search button")
    expect(page.get_by_test_id("customer-id")).to_have_text("c1")

    def all_sent() -> bool:  # the sink writes, then delivery marks the key sent
        page.reload()
        return _rows(page, "action", 4) != [] and all(
            d.endswith("(sent)") for d in _rows(page, "action", 4)
        )

    _until("c1's actions marked sent", all_sent, c, timeout=30)
    assert _rows(page, "event", 3) == ["order_completed", "cart_item_added", "product_viewed"]
    # newest first: the cart's send fires 1 s after the cart, after the order's thanks
    actions = _rows(page, "action", 3)
    assert actions[0] == "webhook: later"
    assert sorted(actions) == ["webhook: later", "webhook: seen", "webhook: thanks"]
    assert _rows(page, "action", 4) == [
        f"{a['rule_id']} / default (sent)"
        for a in sorted(
            (a for a in _lines(sent) if a["customer_id"] == "c1"),
            key=lambda a: a["fire_at"],
            reverse=True,
        )
    ]
    # the neighbour's records stay out (an id no random CSRF token can hold: "p9" did)
    assert "p-neighbour" not in page.content()
    covers = page.get_by_test_id("timeline-covers").inner_text()
    assert "records of this customer's partition" in covers, covers
    watched.shot("distributed-customer")

    page.goto(base + "/ui/customers/c3")
    expect(page.get_by_test_id("customer-id")).to_have_text("c3")
    _until("c3's action marked sent", lambda: page.reload() or _rows(page, "action", 4)
           == ["order-thanks / default (sent)"], c, timeout=30)  # fmt: skip
    assert _rows(page, "event", 3) == ["order_completed"]  # not the view before the erase
    watched.shot("distributed-customer-after-erase")

    page.goto(base + "/ui/customers/c4")
    expect(page.get_by_test_id("customer-id")).to_have_text("c4")
    assert consent_rows(page) == export_rows(history)
    assert [r[1] for r in consent_rows(page)] == ["email off", "email on, sms on"]
