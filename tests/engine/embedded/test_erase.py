"""Erasure on `nudge run` leaves nothing behind (issue 24): a customer erased mid-stream,
with flows open, actions waiting for a dead receiver, events not yet checkpointed, a
profile email and a phone in the address book; then every byte of every file in the data
directory holds neither the id nor the email. The same after `kill -9` right after the
erase answered and a restart. The id seen again is a new customer whose actions go out
at once. A real `nudge run` process over real HTTP; deadlines guard against hangs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.types import iso
from load_tests.nudge_proc import start_nudge_run, wait_ready
from tests.engine.embedded.test_faults_process import (
    ADMIN,
    WRITE,
    free_port,
    nudge,
    request,
    until,
)

pytestmark = pytest.mark.slow

CID, EMAIL, PHONE = "erase-me-4711", "erase.me.4711@example.com", "+15550104711"
NOW = int(time.time() * 1000)  # a real process on the wall clock: events stamped now
OTHER = "keep-me-0815"


def _hits(data: Path) -> list[tuple[str, str]]:
    """(file, needle) for every file of the data directory holding the id or the email."""
    needles = (CID.encode(), EMAIL.encode(), PHONE.encode())
    out = []
    for path in sorted(data.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            out += [(path.name, n.decode()) for n in needles if n in raw]
    return out


def _metric(port: int, name: str) -> float:
    """A sample's value on the process's /metrics (0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


def _events(cid: str, n: int, email: str | None = None, phone: str = PHONE) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = []
    if email is not None:
        evs.append(
            {
                "event_id": f"{cid}-signup",
                "type": "customer_signed_up",
                "customer_id": cid,
                "timestamp": iso(NOW),
                "properties": {
                    "attributes": {"email": email, "phone": phone},
                    "consent": {"email": True},
                },
            }
        )
    for i in range(n):
        evs.append(
            {
                "event_id": f"{cid}-e{i}",
                "type": "order_completed" if i % 2 == 0 else "cart_item_added",
                "customer_id": cid,
                "timestamp": iso(NOW),
                "properties": {"order_id": f"{cid}-o{i}", "total": 300.0}
                if i % 2 == 0
                else {"product_id": f"p{i}", "price": 20.0},
            }
        )
    return evs


def _sinks(tmp_path: Path) -> Path:
    """Emails to the actions file; webhooks (the VIP rule) to a receiver that is down, so
    they wait in the outbox, retried."""
    path = tmp_path / "sinks.json"
    path.write_bytes(
        orjson.dumps(
            {
                "default": "file",
                "sinks": {
                    "file": {"type": "jsonl", "path": str(tmp_path / "data" / "actions.jsonl")},
                    "down": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook"},
                },
                "routes": [{"channel": "webhook", "sink": "down"}],
            }
        )
    )
    return path


def test_erase_leaves_nothing_in_the_data_dir_even_after_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sinks = _sinks(tmp_path)
    port = free_port()
    log = tmp_path / "run.log"
    env_interval = os.environ.get("NUDGE_CHECKPOINT_INTERVAL")
    os.environ["NUDGE_CHECKPOINT_INTERVAL"] = "3600"  # the events stay in the journal only
    try:
        proc = start_nudge_run(data, port, sinks, tokens=(WRITE, ADMIN), log=log)
    finally:
        if env_interval is None:
            os.environ.pop("NUDGE_CHECKPOINT_INTERVAL", None)
        else:
            os.environ["NUDGE_CHECKPOINT_INTERVAL"] = env_interval
    try:
        wait_ready(port, proc, log)
        body = _events(CID, 6, EMAIL) + _events(OTHER, 4, "keep@example.com", "+15550100815")
        assert request("POST", port, "/v1/events", body, WRITE)[0] == 202

        def flowing() -> bool:
            status, view = request("GET", port, f"/v1/customers/{CID}")
            return status == 200 and bool(view["flows"])

        until(flowing, "the customer's flows open")
        until(lambda: (data / "actions.jsonl").exists() and CID.encode()
              in (data / "actions.jsonl").read_bytes(), "an email in the actions file")  # fmt: skip
        before = {n for _, n in _hits(data)}
        assert before >= {CID, EMAIL}  # the customer is in the data directory

        # before: the CLI's search finds the customer (exit 1); then it erases through
        # the API (profile values read first) and searches again: nothing (exit 0)
        look = nudge("erase", CID, "--verify", "--data", str(data), "--value", EMAIL)
        assert look.returncode == 1, look.stderr
        assert "journal.db" in look.stdout
        assert EMAIL not in look.stdout + look.stderr  # values are shown masked
        done = nudge(
            "erase", CID, "--url", f"http://127.0.0.1:{port}", "--verify", "--data", str(data)
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 hit(s)" in done.stderr
        erased = orjson.loads(done.stdout.splitlines()[0])
        e = erased["erased"]
        assert e["state"] is True
        assert e["journal_entries"] == 7
        assert e["actions_file_lines"] >= 1
        assert e["outbox_rows"] >= 1  # the webhooks waiting for the dead receiver
        assert _hits(data) == []
        proc.send_signal(signal.SIGKILL)  # right after the erase answered
        proc.wait(timeout=30)
        assert _hits(data) == []

        proc = start_nudge_run(data, port, sinks, tokens=(WRITE, ADMIN), log=log)
        wait_ready(port, proc, log)
        # the erased entries were replayed from the journal (not checkpointed): skipped, counted
        assert _metric(port, "nudge_events_erased_skipped_total") == e["journal_entries"]
        assert request("GET", port, f"/v1/customers/{CID}")[0] == 404
        assert request("GET", port, f"/v1/customers/{OTHER}")[0] == 200  # untouched
        assert _hits(data) == []

        # seen again: a new customer, its actions go out at once (nothing held back)
        again = [
            {
                "event_id": "again-1",
                "type": "customer_signed_up",
                "customer_id": CID,
                "timestamp": iso(NOW + 1000),
                "properties": {"consent": {"email": True}},
            }
        ]
        assert request("POST", port, "/v1/events", again, WRITE)[0] == 202

        def welcomed() -> bool:
            lines = (data / "actions.jsonl").read_bytes().splitlines()
            return any(
                orjson.loads(x).get("customer_id") == CID and orjson.loads(x)["template"]
                == "welcome_1" for x in lines
            )  # fmt: skip

        until(welcomed, "the returning customer's welcome email")
        status, view = request("GET", port, f"/v1/customers/{CID}")
        assert status == 200
        assert view["profile"]["orders"] == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    time.sleep(0)


async def test_suppressed_ids_events_are_dropped_and_counted_across_restarts(
    tmp_path: Path,
) -> None:
    from tests.engine.embedded.conftest import running
    from tests.engine.embedded.test_api import metric

    data = tmp_path / "data"
    ev = {
        "event_id": "s1",
        "type": "page_viewed",
        "customer_id": CID,
        "timestamp": iso(NOW),
        "properties": {},
    }
    async with running(data) as h:
        admin = h.auth("admin")
        assert (await h.post_events([ev]))[0] == 202
        await h.settle()
        url = h.url(f"/v1/customers/{CID}?suppress=maybe")
        async with h.session.delete(url, headers=admin) as r:
            assert r.status == 400
            assert (await r.json())["error"]["field"] == "suppress"
        async with h.session.delete(
            h.url(f"/v1/customers/{CID}?suppress=true"), headers=admin
        ) as r:
            assert r.status == 200
            assert (await r.json())["erased"]["suppressed"] is True
        other = {**ev, "event_id": "s2", "customer_id": OTHER}
        assert (await h.post_events([{**ev, "event_id": "s3"}, other]))[0] == 202
        await h.settle()
        async with h.session.get(h.url(f"/v1/customers/{CID}"), headers=admin) as r:
            assert r.status == 404  # dropped at the edge: no state
        async with h.session.get(h.url(f"/v1/customers/{OTHER}"), headers=admin) as r:
            assert r.status == 200
        assert await metric(h, "nudge_events_suppressed_total") == 1
    assert CID.encode() not in (data / "suppressed.db").read_bytes()  # kept hashed only
    async with running(data) as h:  # the list survives a restart
        assert (await h.post_events([{**ev, "event_id": "s4"}]))[0] == 202
        await h.settle()
        async with h.session.get(h.url(f"/v1/customers/{CID}"), headers=h.auth("admin")) as r:
            assert r.status == 404
        assert await metric(h, "nudge_events_suppressed_total") == 1


async def test_a_dead_letter_replay_after_an_erase_sends_nothing_of_the_customer(
    tmp_path: Path,
) -> None:
    from engine.types import Action
    from tests.engine.embedded.conftest import running

    def letter(cid: str) -> Action:
        return Action("vip", 1, cid, "webhook", "vip", {}, "default", f"key-{cid}", NOW, "")

    async with running(tmp_path / "data") as h:
        rt = h.runtime
        for cid in (CID, OTHER):
            rt.dead.add(letter(cid), "default", "HTTP 400", 1, "rejected")
        admin = h.auth("admin")
        async with h.session.delete(h.url(f"/v1/customers/{CID}"), headers=admin) as r:
            assert (await r.json())["erased"]["dead_letters"] == 1
        assert rt.dead.request_replay() == 1  # only the other customer's is left
        [d] = await h.hook.wait_for(1)
        assert d.body["customer_id"] == OTHER
        await h.settle()
        assert [x.body["customer_id"] for x in h.hook.deliveries] == [OTHER]
