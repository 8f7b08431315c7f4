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

Several groups (the workers' ``<app id>`` and, with ``--role deliver`` workers,
``<app id>-deliver``, which reads ``actions``): a partition is purged below the lowest
offset any of them committed there, so no group loses a record it has not read; a
partition none of them committed is left alone.

``nudge purge`` (:func:`add_purge_parser`) runs it from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["add_purge_parser", "purge_consumed"]

logger = logging.getLogger(__name__)


async def purge_consumed(
    bootstrap: str,
    group: str | Iterable[str],
    topics: Iterable[str],
    timeout: float = 30.0,
    *,
    dry_run: bool = False,
) -> dict[str, dict[int, int]]:
    """Delete, in each partition of ``topics``, the records below the offset ``group``
    committed there (several groups: the lowest any of them committed). Returns topic ->
    partition -> the partition's new log start offset (``dry_run``: the offset records
    would be deleted below; nothing is deleted). Partitions no group committed are left
    alone."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    wanted = set(topics)
    groups = [group] if isinstance(group, str) else list(group)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap.removeprefix("kafka://"))
    await admin.start()
    try:
        below: dict[Any, int] = {}
        for g in groups:
            committed = await admin.list_consumer_group_offsets(g)
            for tp, om in committed.items():
                if tp.topic in wanted and om is not None and om.offset >= 0:
                    below[tp] = min(below.get(tp, om.offset), om.offset)
        todo = {tp: RecordsToDelete(before_offset=off) for tp, off in below.items() if off > 0}
        if not todo:
            return {}
        if dry_run:
            starts = {tp: r.before_offset for tp, r in todo.items()}
        else:
            starts = await admin.delete_records(todo, timeout_ms=int(timeout * 1000))
    finally:
        await admin.close()
    out: dict[str, dict[int, int]] = {}
    for tp, low in sorted(starts.items()):
        out.setdefault(tp.topic, {})[tp.partition] = low
    if not dry_run:
        logger.info("purged records below the committed offsets of %s: %s", groups, out)
    return out


def add_purge_parser(sub: Any) -> None:
    """``nudge purge``: DeleteRecords below the workers' committed offsets."""
    p = sub.add_parser(
        "purge",
        help="distributed: delete the events and actions records the workers are done with "
        "(below their committed offsets), e.g. after an erase",
    )
    p.add_argument("--broker", default="kafka://127.0.0.1:9092")
    p.add_argument("--app-id", default="nudge", help="the workers' --app-id")
    p.add_argument("--events-topic", default="events")
    p.add_argument("--actions-topic", default="actions")
    p.add_argument(
        "--group",
        action="append",
        help="consumer group(s) whose committed offsets bound the purge (default: APP_ID "
        "and APP_ID-deliver, the lowest offset of the two where both committed)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would go; delete nothing")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for the broker")
    p.set_defaults(func=_cmd_purge)


def _cmd_purge(args: argparse.Namespace) -> int:
    """One line per partition purged (``topic[partition]: below OFFSET``), then a summary;
    exit 1 with the reason on stderr when the broker fails."""
    groups = args.group or [args.app_id, f"{args.app_id}-deliver"]
    topics = [args.events_topic, args.actions_topic]
    try:
        got = asyncio.run(
            purge_consumed(args.broker, groups, topics, args.timeout, dry_run=args.dry_run)
        )
    except Exception as err:
        print(f"nudge purge: {args.broker}: {err!r}", file=sys.stderr)
        return 1
    verb = "would delete" if args.dry_run else "deleted"
    for topic, parts in got.items():
        for partition, low in parts.items():
            print(f"{topic}[{partition}]: {verb} the records below offset {low}")
    n = sum(len(parts) for parts in got.values())
    print(f"{n} partition(s) of {', '.join(topics)}; groups {', '.join(groups)}", file=sys.stderr)
    return 0
