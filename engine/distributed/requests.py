"""Customer read and erase on the distributed runtime: request and reply through Kafka.

Only the worker that owns a customer's partition holds its state. The ingest therefore
produces the request to the ``events`` topic keyed by the customer id, so it lands in
that customer's partition, in order with its events, marked by the ``nudge-request``
header (the event decoder never sees it). The owning worker answers it in turn: a read
sees every event accepted before it; an erase drops the state and its timers, writes
the changelog tombstone, the segment drops and an erase mark (engine/distributed/
erase_marks.py: the id's earlier events, still in the topic, are skipped on a replay)
with the batch's output. The reply goes
to ``<app id>-replies`` (one partition, an hour's retention) keyed by the request id,
once that output is acknowledged. The ingest follows the replies topic from its end and
hands each reply to the request waiting for it.

No reply within the timeout (a rebalance in progress, no live owner) is a 503 with
``Retry-After``, never a 500. The request stays in the topic: a read is answered to
nobody, an erase is applied when the partition's next owner reaches it, so retrying an
erase is safe (the second answer says ``state: false``). A request reprocessed after a
crash is answered again; the ingest ignores replies nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from engine.exceptions import NotReady
from engine.tasks import cancel

__all__ = [
    "REQUEST_HEADER",
    "CustomerRequest",
    "Kind",
    "ReplyFollower",
    "ensure_replies_topic",
    "erased_body",
    "not_found_body",
    "reply_record",
    "request_of",
]

logger = logging.getLogger(__name__)

REQUEST_HEADER = "nudge-request"
Kind = Literal["read", "erase", "export"]
_KINDS: tuple[Kind, ...] = ("read", "erase", "export")


@dataclass(frozen=True, slots=True)
class CustomerRequest:
    id: str
    kind: Kind
    customer_id: str


def request_of(record: Any) -> CustomerRequest | None:
    """The request an ``events`` record carries (its ``nudge-request`` header), or None
    for an event. A malformed request is logged and dropped (None would decode it as
    an event, which it is not: an empty request instead)."""
    headers: Sequence[tuple[str, bytes]] | None = getattr(record, "headers", None)
    if not headers or not any(k == REQUEST_HEADER for k, _ in headers):
        return None
    try:
        body = orjson.loads(record.value or b"")
        kind, rid, cid = body["kind"], body["id"], body["customer_id"]
        if kind not in _KINDS or not isinstance(rid, str) or not isinstance(cid, str):
            raise ValueError(body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        logger.error("malformed customer request skipped: %r", err)
        return CustomerRequest("", "read", "")
    return CustomerRequest(rid, kind, cid)


def request_record(req: CustomerRequest) -> bytes:
    return orjson.dumps({"kind": req.kind, "id": req.id, "customer_id": req.customer_id})


def reply_record(request_id: str, status: int, body: dict[str, Any]) -> tuple[bytes, bytes]:
    """The replies topic record (key, value) answering ``request_id``."""
    return request_id.encode(), orjson.dumps({"status": status, "body": body})


def not_found_body(customer_id: str) -> dict[str, Any]:
    """What ``nudge run`` answers for an unknown customer (engine/http/app.py)."""
    return {"error": {"code": "not_found", "message": f"no customer {customer_id!r}"}}


def erased_body(customer_id: str, had_state: bool) -> dict[str, Any]:
    """The erase answer, in ``nudge run``'s shape: no journal here (the events stay in the
    ``events`` topic until its retention), nothing pending (actions already produced are
    delivered: see docs/operations.md), one changelog tombstone when there was a state."""
    return {
        "erased": {
            "customer_id": customer_id,
            "state": had_state,
            "journal_entries": 0,
            "pending_actions": 0,
            "checkpoint": 1 if had_state else 0,
        }
    }


async def ensure_replies_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    """Create the replies topic (one partition, an hour's retention) if missing."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                config = {"retention.ms": str(3_600_000)}
                await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while topic not in set(await admin.list_topics()):
            if loop.time() > end:
                raise TimeoutError(f"topic {topic} not listed after {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


class ReplyFollower:
    """The ingest's side: :meth:`call` sends a request and waits for its reply, which a
    consumer of the replies topic (from its end as of :meth:`start`) resolves."""

    def __init__(self, bootstrap: str, replies_topic: str, timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topic = replies_topic
        self.timeout = timeout
        self._waiting: dict[str, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        await ensure_replies_topic(self.bootstrap, self.topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)  # resolved now: a reply sent after start is read
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(), name="ingest-replies")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(NotReady("ingest stopping"))
        self._waiting.clear()

    async def _follow(self) -> None:
        consumer = self._consumer
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    fut = self._waiting.pop(rec.key.decode(), None) if rec.key else None
                    if fut is None or fut.done():
                        continue  # another ingest's, or answered again after a crash
                    try:
                        reply = orjson.loads(rec.value)
                        fut.set_result((int(reply["status"]), reply["body"]))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                        fut.set_exception(RuntimeError(f"malformed reply: {err!r}"))

    async def call(
        self, producer: Any, events_topic: str, kind: Kind, customer_id: str
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) from the worker owning ``customer_id``; raises
        :class:`NotReady` when no answer comes within ``timeout`` seconds."""
        if self._consumer is None or producer is None:
            raise NotReady("ingest not connected to Kafka")
        req = CustomerRequest(uuid.uuid4().hex, kind, customer_id)
        fut: asyncio.Future[tuple[int, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[req.id] = fut
        try:
            sent = await producer.send(
                events_topic,
                value=request_record(req),
                key=customer_id.encode(),
                headers=[(REQUEST_HEADER, b"1")],
            )
            await sent
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise NotReady(
                f"no answer from the worker owning {customer_id!r} within {self.timeout:g}s"
                " (a rebalance?); retry"
            ) from None
        finally:
            self._waiting.pop(req.id, None)
