"""Create the runtime's topics before faust subscribes, and refuse a wrong layout.

faust assigns partitions only of topics that exist when the group forms: an ``events``
or ``actions`` topic first created later (by the ingest's first produce, or the first
action, with broker auto-create) leaves the group without its partitions until the next
metadata refresh (about 5 minutes), and events accepted meanwhile are acted on that late.
So ``nudge worker`` and ``nudge topics ensure`` (the one-shot step the compose and
Kubernetes kits run before the workers) create every topic the runtime produces to or
subscribes to when missing: ``events``, ``actions`` and its dead-letter topic, all with
``partitions`` partitions (co-partitioned: a customer's events, actions and changelog
rows share a partition number), and the segment membership topic (``<app id>-segments``,
engine/distributed/segments.py), compacted: a key's last record is the membership as it
stands. They return once the broker lists every one with a leader for each partition.

An existing topic of the layout with another partition count (the customer table's
changelog, which faust creates itself, included) is refused with
:class:`TopicLayoutError`: keys would land on other partitions than the state that
holds them. Nothing is changed then; the operator picks the count (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.distributed.config import WorkerConfig
from engine.distributed.exceptions import DistributedError

__all__ = [
    "TopicLayoutError",
    "TopicPlan",
    "ensure_topics",
    "key_partition",
    "plan_of",
]

logger = logging.getLogger(__name__)

_ALREADY_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS


class TopicLayoutError(DistributedError):
    """An existing topic has another partition count than the configured one."""

    def __init__(self, topic: str, found: int, wanted: int) -> None:
        self.topic, self.found, self.wanted = topic, found, wanted
        super().__init__(
            f"topic {topic!r} has {found} partitions, --partitions is {wanted}: use "
            f"--partitions {found}, or a new topic / app id (keys cannot move partitions)"
        )


@dataclass(frozen=True)
class TopicPlan:
    """The topics of one deployment: ``create`` (name -> topic configs) made when
    missing, ``check`` (names) only checked when they exist, all with ``partitions``."""

    partitions: int
    replication_factor: int
    create: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    check: tuple[str, ...] = ()


def plan_of(cfg: WorkerConfig) -> TopicPlan:
    """The topics ``cfg`` (any role) reads and writes."""
    return TopicPlan(
        partitions=cfg.partitions,
        replication_factor=cfg.replication_factor,
        create={
            cfg.events_topic: {},
            cfg.actions_topic: {},
            cfg.dead_topic: {},
            cfg.segments_topic: {"cleanup.policy": "compact"},
        },
        check=(f"{cfg.app_id}-customers-changelog",),
    )


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a record keyed ``key`` goes to: the Java client's and aiokafka's
    default partitioner (murmur2 of the key, positive, modulo the partition count), which
    the ingest and ``nudge replay`` produce with, so an identity forward lands where the
    target customer's own events do."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def _layout(admin: Any) -> dict[str, tuple[int, bool]]:
    """name -> (partition count, every partition has a leader), of every topic."""
    out: dict[str, tuple[int, bool]] = {}
    for t in await admin.describe_topics():  # all topics: naming some may auto-create them
        parts = t.get("partitions") or []
        if t.get("error_code", 0) == 0:
            out[t["topic"]] = (len(parts), all(p.get("leader", -1) >= 0 for p in parts))
    return out


async def ensure_topics(bootstrap: str, plan: TopicPlan, timeout: float = 30.0) -> list[str]:
    """Create the missing topics of ``plan`` (:func:`plan_of` a worker config) on the
    broker at ``bootstrap``, check the partition count of all that exist, and return once
    each has a leader on every partition. Returns the names created here. Raises
    :class:`TopicLayoutError` (nothing created) for a wrong count, :class:`TimeoutError`
    when the broker does not list them in ``timeout`` seconds."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap.removeprefix("kafka://"))
    await admin.start()
    try:
        layout = await _layout(admin)
        for name in (*plan.create, *plan.check):
            if name in layout and layout[name][0] != plan.partitions:
                raise TopicLayoutError(name, layout[name][0], plan.partitions)
        missing = [t for t in plan.create if t not in layout]
        if missing:
            resp = await admin.create_topics(
                [
                    NewTopic(
                        t,
                        plan.partitions,
                        plan.replication_factor,
                        topic_configs=dict(plan.create[t]),
                    )
                    for t in missing
                ]
            )
            for name, code, *rest in resp.topic_errors:
                if code not in (0, _ALREADY_EXISTS):  # exists: another process made it
                    raise DistributedError(f"creating topic {name!r}: error {code} {rest}")
            logger.info("created topics %s (%d partitions)", missing, plan.partitions)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            layout = await _layout(admin)
            for name in plan.create:  # created by another process meanwhile, maybe
                if name in layout and layout[name][0] != plan.partitions:
                    raise TopicLayoutError(name, layout[name][0], plan.partitions)
            if all(layout.get(t, (0, False))[1] for t in plan.create):
                return missing
            if loop.time() > end:
                raise TimeoutError(f"topics {sorted(plan.create)} not ready after {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
