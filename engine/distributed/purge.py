"""Delete the records a consumer group is done with (Kafka DeleteRecords), so an erased
customer's events and actions leave the broker before the topics' retention.

Records cannot be deleted one by one from a non-compacted topic: the ``events`` and
``actions`` topics keep an erased customer's records until their ``retention.ms``
(docs/operations.md, "Erasure"). What can go earlier is a topic's head: every record
below an offset of a partition. Below the worker group's committed offset a record is
not needed by Nudge again (its effects are in the changelog and Redis; a restart
resumes from the committed offset), so :func:`purge_consumed` moves each partition's
log start up to it. It deletes other customers' records below that offset as well:
what is lost is the ability to replay them (``nudge replay`` from the topic, an offset
reset) and any other consumer group that had not read them yet. The erase marks
(engine/distributed/erase_marks.py) already make a replay skip an erased customer's
older events; a purge is for an operator who must show the records gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["purge_consumed"]

logger = logging.getLogger(__name__)


async def purge_consumed(
    bootstrap: str, group: str, topics: Iterable[str], timeout: float = 30.0
) -> dict[str, dict[int, int]]:
    """Delete, in each partition of ``topics``, the records below ``group``'s committed
    offset. Returns topic -> partition -> the partition's new log start offset
    (partitions the group never committed are left alone)."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    wanted = set(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap.removeprefix("kafka://"))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        todo = {
            tp: RecordsToDelete(before_offset=om.offset)
            for tp, om in committed.items()
            if tp.topic in wanted and om is not None and om.offset > 0
        }
        if not todo:
            return {}
        starts = await admin.delete_records(todo, timeout_ms=int(timeout * 1000))
    finally:
        await admin.close()
    out: dict[str, dict[int, int]] = {}
    for tp, low in sorted(starts.items()):
        out.setdefault(tp.topic, {})[tp.partition] = low
    logger.info("purged records below the committed offsets of %s: %s", group, out)
    return out
