"""The worker's settings: one immutable object the app factory and the CLI share."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ROLES", "WorkerConfig"]

ROLES = ("all", "process", "deliver")


# seconds Redis keeps an action's delivery status (its idempotency key)
IDEMPOTENCY_TTL_S = 7 * 86_400


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a ``nudge worker`` needs.

    ``datadir``: faust's application directory (its ``{conf.name}`` is the consumer
    group). Tables live in memory and in Kafka changelogs, so nothing is kept there;
    faust's default would create an empty ``<group>-data`` directory in the working
    directory of every worker.
    ``partitions`` must equal the ``events`` topic's partition count (the customer table
    and the actions topic are created with it: co-partitioning). ``batch_size`` bounds a
    processing batch (records per fetch, all partitions together; ``fetch_bytes`` is the
    per-partition fetch size). Actions are delivered per fetch, ``action_batch_size`` at
    a time, with up to ``delivery_batches`` fetches in flight. ``producer_batch_bytes``:
    the producer's record batch size; ``output_depth``: outputs (batches, timer ticks) in
    flight at once.
    ``session_timeout`` bounds how long a dead worker keeps its partitions.
    ``rules`` are the files seeded into Redis when no rule set was deployed yet.
    ``role``: ``all`` processes events and delivers actions in one process; ``process``
    and ``deliver`` split them (delivery then runs as its own consumer group,
    ``<app_id>-deliver``, and scales on its own).
    ``analytics``: campaign counts ride on the changelog rows, and an ingest this worker
    serves (``--http-port``) folds them into Redis for the reports (docs/analytics.md).
    """

    broker: str = "kafka://127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    app_id: str = "nudge"
    partitions: int = 4
    replication_factor: int = 1
    events_topic: str = "events"
    actions_topic: str = "actions"
    rules: list[str] | None = None
    sinks: dict[str, Any] = field(default_factory=lambda: {"default": "log"})
    batch_size: int = 2000
    action_batch_size: int = 500
    delivery_batches: int = 8
    fetch_bytes: int = 4 * 1_048_576
    producer_batch_bytes: int = 1_048_576
    output_depth: int = 4
    tick: float = 0.1
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    commit_interval: float = 1.0
    redis_prefix: str = "nudge"
    claim_ttl: int = 30
    idempotency_ttl: int = IDEMPOTENCY_TTL_S
    delivery_concurrency: int = 64
    rules_poll: float = 5.0
    stats_file: str | None = None
    stats_interval: float = 1.0
    role: str = "all"
    analytics: bool = False
    datadir: str = str(Path(tempfile.gettempdir()) / "nudge-faust" / "{conf.name}")

    @property
    def processing(self) -> bool:
        return self.role in ("all", "process")

    @property
    def delivering(self) -> bool:
        return self.role in ("all", "deliver")

    @property
    def group_id(self) -> str:
        """The faust app id (Kafka consumer group) of this role."""
        return self.app_id if self.processing else f"{self.app_id}-deliver"

    @property
    def dead_topic(self) -> str:
        return f"{self.actions_topic}-dead"

    @property
    def changelog_topic(self) -> str:
        """The customer table's changelog (faust names it)."""
        return f"{self.app_id}-customers-changelog"

    @property
    def replies_topic(self) -> str:
        """Customer request replies (engine/distributed/requests.py)."""
        return f"{self.app_id}-replies"

    @property
    def segments_topic(self) -> str:
        """The compacted segment membership topic (engine/distributed/segments.py)."""
        return f"{self.app_id}-segments"
