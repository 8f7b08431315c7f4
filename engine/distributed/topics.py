"""Create the worker's output topics before faust subscribes.

faust assigns partitions only of topics that exist when the group forms; an ``actions``
topic first created by the first action produced (broker auto-create) leaves the
deliver agent without partitions until the group's next rebalance. So ``nudge worker``
creates ``actions`` and its dead-letter topic (``partitions`` each, co-partitioned with
``events``) when missing, and waits until the broker's metadata lists them. The
segment membership topic (``<app id>-segments``, engine/distributed/segments.py) is
created with them, compacted: a key's last record is the membership as it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.distributed.config import WorkerConfig

__all__ = ["ensure_topics", "key_partition"]

logger = logging.getLogger(__name__)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a record keyed ``key`` goes to: the Java client's and aiokafka's
    default partitioner (murmur2 of the key, positive, modulo the partition count), which
    the ingest and ``nudge replay`` produce with, so an identity forward lands where the
    target customer's own events do."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def ensure_topics(cfg: WorkerConfig, timeout: float = 30.0) -> None:
    """Create the actions, dead-letter and segments topics if missing; return once
    listed."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    wanted = [cfg.actions_topic, cfg.dead_topic, cfg.segments_topic]
    compacted = {cfg.segments_topic: {"cleanup.policy": "compact"}}
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.broker.removeprefix("kafka://"))
    await admin.start()
    try:
        missing = [t for t in wanted if t not in set(await admin.list_topics())]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker did
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            cfg.partitions,
                            cfg.replication_factor,
                            topic_configs=compacted.get(t, {}),
                        )
                        for t in missing
                    ]
                )
            logger.info("created topics %s", missing)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not set(wanted) <= set(await admin.list_topics()):
            if loop.time() > end:
                raise TimeoutError(f"topics {wanted} not listed after {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
