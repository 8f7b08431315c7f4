"""HTTP ingest for the distributed runtime: a backend for
:func:`engine.http.app.create_app` that produces each accepted event to the ``events``
topic (key: customer id, timestamp: acceptance time) with ``acks=all`` and an idempotent
producer, and answers only after the broker acknowledged every event of the request.

Admission (engine/distributed/admission.py): a request is produced only if the events
already awaiting the broker's acknowledgement drain within ``admission_target`` seconds
(times its priority's factor, event types classed as on ``nudge run``) at the measured
acknowledgement pace; else an immediate 429 with ``Retry-After``, never a wait behind a
producer buffer (a slow, paused or unreachable broker included).

Rule endpoints go to Redis (``PUT /v1/rules`` publishes a new version to every worker).
Customer read and erase go to the worker owning the customer's partition, as requests in
the ``events`` topic answered on the replies topic (engine/distributed/requests.py): the
same answers as ``nudge run``, 503 with ``Retry-After`` when none comes in time.

The console's customer timeline (engine/distributed/history.py): with ``actions_topic``,
the customer's records among the tails of its partition of the ``events`` and ``actions``
topics, found by the producer's own partitioner.

Segments (engine/http/segments.py): with ``segments_topic`` the ingest follows the
workers' membership topic into a segment index (engine/distributed/segments.py) and
serves the listing, pages and exports from it once it has read the topic up to its end
as of the start (503 ``not_ready`` before). The listing shows the segments of the deployed
rule set, which the ingest follows in Redis (a deploy through another process included:
pub/sub, and a poll every ``rules_poll`` seconds), and the backfill progress the workers
store in Redis, summed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from engine.admission import DEFAULT_PRIORITIES, Decision
from engine.analytics.source import CustomerHistory
from engine.clock import Clock, SystemClock
from engine.distributed.admission import BrokerAdmission
from engine.distributed.analytics import ChangelogAggregator
from engine.distributed.history import TopicHistory
from engine.distributed.requests import Kind, ReplyFollower
from engine.distributed.rules import deploy_rules, stored_rule_files
from engine.distributed.segments import SegmentFeed
from engine.distributed.storage.analytics import RedisAnalytics
from engine.distributed.storage.redis import RedisState
from engine.distributed.storage.suppression import RedisSuppression
from engine.exceptions import Backpressure, NotReady
from engine.segment_index import SegmentIndex
from engine.tasks import cancel
from engine.types import Event
from rules.ruleset import RuleSet, load_stored

__all__ = ["KafkaIngest"]

logger = logging.getLogger(__name__)

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
Batch = tuple[list[Event], bytes]


class KafkaIngest:
    """``accept((events, body))`` returns once every event is in Kafka (acks=all).

    Raises :class:`NotReady` before :meth:`start` / after :meth:`stop`, and
    :class:`Backpressure` when admission refuses the request (``admission_target``
    seconds of queued work, ``priorities``: event type -> low/normal/high overrides) or
    more than ``max_inflight`` events await their acks.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = "events",
        *,
        redis: RedisState | None = None,
        clock: Clock | None = None,
        max_inflight: int = 100_000,
        linger_ms: int = 2,
        segments_topic: str | None = None,
        rules_poll: float = 2.0,
        replies_topic: str | None = None,
        request_timeout: float = 10.0,
        admission_target: float = 0.25,
        priorities: dict[str, str] | None = None,
        changelog_topic: str | None = None,
        actions_topic: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap.removeprefix("kafka://")
        self.topic = topic
        self.redis = redis
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_inflight = max_inflight
        self.admission = BrokerAdmission(
            admission_target, {**DEFAULT_PRIORITIES, **(priorities or {})}
        )
        self.linger_ms = linger_ms
        self.ready = False
        self.inflight = 0
        self._producer: Any = None
        self.ruleset: RuleSet | None = None
        self.rules_version = 0
        self.rules_files: dict[str, str] = {}
        self.rules_poll = rules_poll
        self._rules_task: asyncio.Task[None] | None = None
        self.suppression: RedisSuppression | None = None
        if redis is not None:
            self.suppression = RedisSuppression(redis)
        self.suppressed = 0  # events dropped: their customer was erased with suppression
        self.replies: ReplyFollower | None = None
        if replies_topic is not None:
            self.replies = ReplyFollower(self.bootstrap, replies_topic, request_timeout)
        # campaign reports (engine/http/reports.py): with ``changelog_topic``, the counts
        # the workers' rows carry, folded into Redis here (engine/distributed/analytics.py)
        self.analytics_source: RedisAnalytics | None = None
        self.aggregator: ChangelogAggregator | None = None
        if changelog_topic is not None and redis is not None:
            self.analytics_source = RedisAnalytics(redis.client, redis.prefix)
            self.aggregator = ChangelogAggregator(bootstrap, changelog_topic, self.analytics_source)
        self.history: TopicHistory | None = None
        if actions_topic is not None:
            self.history = TopicHistory(self.bootstrap, topic, actions_topic, redis)
        self.segment_feed: SegmentFeed | None = None
        if segments_topic is not None:
            self.segment_feed = SegmentFeed(self.bootstrap, segments_topic, SegmentIndex(None))

    @property
    def segment_index(self) -> SegmentIndex | None:
        """The membership index, once the feed has caught up (None: not ready)."""
        feed = self.segment_feed
        return feed.index if feed is not None and feed.caught_up else None

    def segment_sizes(self) -> dict[str, int]:
        """Members of each segment of the deployed rule set (``nudge_segment_members``)."""
        index = self.segment_index
        if index is None or self.ruleset is None:
            return {}
        return {seg.id: index.size(seg.id) for seg in self.ruleset.segments}

    async def backfill_progress(self) -> dict[str, Any]:
        """The workers' segment backfill progress, summed (``running``: any runs)."""
        out: dict[str, Any] = {"done": 0, "total": 0, "running": False}
        if self.redis is None:
            return out
        for p in await self.redis.backfill_progress():
            out["done"] += int(p.get("done", 0))
            out["total"] += int(p.get("total", 0))
            out["running"] = out["running"] or bool(p.get("running"))
        return out

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
        )
        await self._producer.start()
        if self.redis is not None:
            rec = await self.redis.load_rules()
            if rec is not None:
                self.ruleset = load_stored(sorted(rec.files.items()), rec.version)
                self.rules_version, self.rules_files = rec.version, rec.files
            self._rules_task = asyncio.create_task(self._follow_rules(), name="ingest-rules")
        if self.segment_feed is not None:
            await self.segment_feed.start()
        if self.replies is not None:
            await self.replies.start()
        if self.suppression is not None:
            await self.suppression.start()
        if self.aggregator is not None:
            await self.aggregator.start()
        if self.history is not None:
            await self.history.start()
        self.ready = True

    async def _follow_rules(self) -> None:
        """Keep ``ruleset`` the deployed one (another process may deploy)."""
        redis = self.redis
        assert redis is not None
        async for version in redis.rule_updates(self.rules_poll):
            if version <= self.rules_version:
                continue
            rec = await redis.load_rules()
            if rec is None or rec.version <= self.rules_version:
                continue
            try:
                rs = await asyncio.to_thread(load_stored, sorted(rec.files.items()), rec.version)
            except Exception:
                logger.exception("rule set version %d does not load; skipped", rec.version)
                self.rules_version = rec.version
                continue
            self.ruleset, self.rules_version, self.rules_files = rs, rec.version, rec.files

    async def stop(self) -> None:
        self.ready = False
        task, self._rules_task = self._rules_task, None
        await cancel(task)
        if self.segment_feed is not None:
            await self.segment_feed.stop()
        if self.replies is not None:
            await self.replies.stop()
        if self.suppression is not None:
            await self.suppression.stop()
        if self.aggregator is not None:
            await self.aggregator.stop()
        if self.history is not None:
            await self.history.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def accept(self, batch: Batch) -> None:
        if not self.ready or self._producer is None:
            raise NotReady("ingest not connected to Kafka")
        events, body = batch
        sup = self.suppression
        if sup is not None and len(sup):  # erased with suppression: dropped, counted
            kept = [i for i, ev in enumerate(events) if ev.customer_id not in sup]
            if len(kept) < len(events):
                self.suppressed += len(events) - len(kept)
                raws = _raw_list.decode(body)
                events = [events[i] for i in kept]
                body = b"[" + b",".join(bytes(raws[i]) for i in kept) + b"]"
                if not events:
                    return
        queued = self.admission.queued
        d = self.admission.decide(queued, (ev.type for ev in events))
        self._judged(d, len(events))
        if not d.admitted:
            raise Backpressure(d.retry_after, queued)
        if self.inflight + len(events) > self.max_inflight:
            raise Backpressure(1.0, self.inflight)
        raws = _raw_list.decode(body)  # the events as sent, one message each
        accepted_at = self.clock.now()
        send = self._producer.send
        self.inflight += len(events)
        pending = self.admission.sent(len(events))
        ok = False
        try:
            futs = [
                await send(
                    self.topic,
                    value=bytes(raw),
                    key=ev.customer_id.encode(),
                    timestamp_ms=accepted_at,
                )
                for ev, raw in zip(events, raws, strict=True)
            ]
            await asyncio.gather(*futs)
            ok = True
        finally:
            self.inflight -= len(events)
            self.admission.acked(pending, ok)

    def _judged(self, decision: Decision, events: int) -> None:
        """Admission judged a request of ``events`` (a hook for the metrics)."""

    async def customer(self, customer_id: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``GET /v1/customers/{id}``, from the owning worker."""
        return await self._request("read", customer_id)

    async def export(self, customer_id: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``GET /v1/customers/{id}/export``: what the owning worker
        holds (the events stay in the ``events`` topic until its retention)."""
        return await self._request("export", customer_id)

    async def customer_history(self, customer_id: str, scan: int) -> CustomerHistory:
        """The console's timeline: ``customer_id``'s records among the last ``scan`` of
        its partitions (engine/distributed/history.py); empty without ``actions_topic``."""
        if not self.ready or self._producer is None:
            raise NotReady("ingest not connected to Kafka")
        if self.history is None:
            return CustomerHistory(covers="This ingest reads no topics for a timeline.")
        from aiokafka.partitioner import DefaultPartitioner

        parts = sorted(await self._producer.partitions_for(self.topic))
        partition = DefaultPartitioner()(customer_id.encode(), parts, parts)  # as produced
        return await self.history.read(customer_id, partition, scan)

    async def erase(self, customer_id: str, suppress: bool = False) -> dict[str, Any]:
        """What ``DELETE /v1/customers/{id}`` erased, on the owning worker; with
        ``suppress``, the id's later events are dropped by every ingest."""
        if suppress:
            if self.suppression is None:
                raise NotReady("suppression needs redis (nudge worker --redis)")
            await self.suppression.add(customer_id)  # first: nothing new arrives after
        _, body = await self._request("erase", customer_id)
        erased: dict[str, Any] = body["erased"]
        erased["suppressed"] = suppress
        return erased

    async def _request(self, kind: str, customer_id: str) -> tuple[int, dict[str, Any]]:
        if not self.ready or self.replies is None:
            raise NotReady("customer requests need the replies topic (nudge worker --http-port)")
        kinds: dict[str, Kind] = {"erase": "erase", "export": "export"}
        return await self.replies.call(
            self._producer, self.topic, kinds.get(kind, "read"), customer_id
        )

    async def deploy(self, files: dict[str, str]) -> int:
        """Validate and publish a rule set to every worker (raises RuleErrors), with the
        deployed set's rule versions kept for open flows (engine/distributed/rules.py)."""
        if self.redis is None:
            raise NotReady("no redis configured for rule deploys")
        rs, version = await deploy_rules(self.redis, files)
        if version > self.rules_version:  # else the follower already has a newer one
            self.ruleset, self.rules_version, self.rules_files = rs, version, dict(files)
        return version

    async def rule_files(self, version: int) -> dict[str, str] | None:
        """The files of deployed version ``version`` while Redis keeps it (None: not
        kept): what ``POST /v1/rules/rollback`` deploys again."""
        if self.redis is None:
            raise NotReady("no redis configured for rule deploys")
        return await stored_rule_files(self.redis, version)
