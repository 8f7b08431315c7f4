"""The tracking API and provider feedback on the distributed runtime: `nudge worker
--http-port` serves the HTTP ingest (Kafka producer) in front of its own processing.

A Segment batch from the official Python client: an anonymous visitor views a product,
identifies with an email, and orders under the anonymous id (forwarded to the known
customer, whose partition may be another). The order mail goes out for the known id with
its address. SendGrid's signed `unsubscribe` for that mail switches email consent off on
the worker: the next order's mail is not sent (its webhook action shows the order was
processed)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from segment.analytics import Client as SegmentClient

from tests.distributed.conftest import Cluster
from tests.support.servers import free_port
from tests.support.webhook import Delivery, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

WRITE, ADMIN = "dist-write-token", "dist-admin-token"
SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(
    SG_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
RULES = {
    "mail.yaml": (
        "id: order-mail\ntrigger: {event: order_completed}\nreentry: always\n"
        "steps:\n  - send: {channel: email, template: thanks}\n"
    ),
    "ping.yaml": (
        "id: order-ping\ntrigger: {event: order_completed}\nreentry: always\n"
        "steps:\n  - send: {channel: webhook, template: ping}\n"
    ),
}


async def until(what: str, check: Any, c: Cluster, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        for name, proc in c.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited:\n{c.log_tail(name)}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{c.log_tail('w1')}")


def sent(hook: WebhookReceiver, rule: str) -> list[Delivery]:
    return [d for d in hook.deliveries if d.body["rule_id"] == rule]


async def test_segment_identify_and_sendgrid_unsubscribe_on_the_worker(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "NUDGE_WRITE_TOKEN": WRITE,
        "NUDGE_ADMIN_TOKEN": ADMIN,
        "NUDGE_SENDGRID_VERIFICATION_KEY": SG_PUBLIC,
    }.items():
        monkeypatch.setenv(key, value)
    hook = WebhookReceiver()
    await hook.start()
    try:
        c: Cluster = cluster_factory(hook.url)
        for name, text in RULES.items():
            (c.rules_dir / name).write_text(text)
        port = free_port()
        c.start_worker("w1", "--http-port", str(port), "--data", str(c.tmp / "ingest"))
        url = f"http://127.0.0.1:{port}"
        async with ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(url + "/readyz") as r:
                        return r.status == 200
                except OSError:
                    return False

            end = time.monotonic() + 60
            while not await ready():
                assert time.monotonic() < end, c.log_tail("w1")
                await asyncio.sleep(0.2)

            segment = SegmentClient(write_key=WRITE, host=url, max_retries=0)
            segment.track(anonymous_id="v1", event="Product Viewed", properties={"sku": "s1"})
            segment.identify(user_id="kim", anonymous_id="v1", traits={"email": "kim@x.org"})
            order = {"order_id": "o1", "total": 30.0}
            segment.track(anonymous_id="v1", event="Order Completed", properties=order)
            await asyncio.to_thread(segment.shutdown)

            await until("the first order mail", lambda: sent(hook, "order-mail"), c)
            [mail] = sent(hook, "order-mail")
            assert (mail.body["customer_id"], mail.body["to"]) == ("kim", "kim@x.org")

            # the recipient unsubscribes: SendGrid's signed Event Webhook
            unsubscribe = {
                "email": "kim@x.org",
                "timestamp": int(time.time()),
                "event": "unsubscribe",
                "sg_event_id": "sg-unsub-1",
                "nudge_customer": "kim",
                "nudge_key": mail.key,
                "nudge_rule": "order-mail",
                "nudge_template": "thanks",
            }
            body = orjson.dumps([unsubscribe])
            ts = str(int(time.time()))
            sig = SG_KEY.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
            headers = {
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                "Content-Type": "application/json",
            }
            async with session.post(url + "/v1/sources/sendgrid", data=body, headers=headers) as r:
                assert r.status == 202, await r.text()

            segment = SegmentClient(write_key=WRITE, host=url, max_retries=0)
            order = {"order_id": "o2", "total": 12.0}
            segment.track(user_id="kim", event="Order Completed", properties=order)
            await asyncio.to_thread(segment.shutdown)
            await until("the second order's ping", lambda: len(sent(hook, "order-ping")) == 2, c)
            await asyncio.sleep(0.5)
        assert len(sent(hook, "order-mail")) == 1  # consent off: the second mail not sent
        assert {d.body["customer_id"] for d in sent(hook, "order-ping")} == {"kim"}
    finally:
        await hook.stop()
