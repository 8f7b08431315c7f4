"""The embedded runtime's settings (``nudge run``'s options become these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.embedded.storage.crypt import Sealer

__all__ = ["RuntimeConfig"]


@dataclass
class RuntimeConfig:
    data_dir: Path
    rules: list[str] | None = None
    partitions: int = 4
    max_queue: int = 200_000  # a hard cap in events; admission bounds the queue in time
    # admission (engine/admission.py): seconds of queued work a request may wait
    # behind (times its priority's factor), and event type -> low/normal/high overrides
    admission_target_s: float = 0.25
    priorities: dict[str, str] = field(default_factory=dict)
    checkpoint_interval: float = 10.0
    journal_retention_days: float = 7.0
    synchronous: str = "FULL"
    sinks: dict[str, Any] = field(default_factory=lambda: {"default": "log"})
    delivery_concurrency: int = 32
    compact_idle_s: float = 300.0  # customers idle this long are kept serialized in memory
    # periodic checkpoints: "paced" (engine/embedded/paced.py: packed on the loop a slice
    # at a time, committed by a spawned writer) or "inline" (in-process, through the state
    # thread, as at stop: no second process)
    checkpoint_mode: str = "paced"
    checkpoint_spread: float = 0.6  # paced: share of the interval the packing is spread over
    checkpoint_timeout: float = 300.0  # a checkpoint writer still running then is killed
    # paced: after each slice, the packing waits until no event is queued for the
    # partitions, at most this long: background work goes between the events' slices
    # (bench_ingest at 25k events/s with the loop 81-91% busy: probes over 50 ms about
    # halved; no change seen below 80%)
    background_wait_s: float = 0.05
    compact_slice: int = 500  # states compacted per event loop turn
    gc_freeze_interval: float = 0.25  # seconds between moving survivors out of the GC's reach
    # events a partition processes per loop turn (~1.3 ms at 13 us each): everything else
    # on the loop (HTTP, journal and outbox completions, the other partitions) waits at most
    # one slice per partition; 500 held them up to ~26 ms (bench_ingest: outbox flushes
    # over 25 ms 26-99 per run at 500, 1-26 at 100)
    slice_events: int = 100
    # and at most this long (an event started before it ends is finished): with four
    # partitions a loop turn holds ~8 ms of processing, so an HTTP answer (a 429
    # included) waits a few of those, not a few 100-event slices of expensive events
    slice_seconds: float = 0.002
    # CLV refit schedule (engine/embedded/models.py): seconds between `nudge models fit`
    # subprocesses on the data directory, each followed by a reload; None: off
    refit_every_s: float | None = None
    # campaign analytics (engine/analytics/): counted with every output, committed with
    # the checkpoints; days kept this long (hours: 8 days)
    analytics: bool = True
    analytics_retention_days: float = 400.0
    # supervised background tasks (engine/embedded/supervise.py): a failed task restarts
    # after task_backoff_s, doubling per failure in a row, at most task_backoff_max_s
    task_backoff_s: float = 0.1
    task_backoff_max_s: float = 30.0
    # seconds between storage probes while a write fault is recorded (health.py)
    probe_interval: float = 1.0
    # seconds between refreshes of the journal's customer index (upkeep.py)
    journal_index_interval: float = 1.0
    # what a request refused for a full disk or an I/O error is told to wait (Retry-After)
    storage_retry_after: float = 5.0
    # encryption at rest (engine/embedded/storage/crypt.py): None keeps bodies in plaintext
    sealer: Sealer | None = field(default=None, repr=False)
