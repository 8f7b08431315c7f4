"""What the embedded runtime restores at start, before it accepts anything.

:func:`load_rules`: the latest deployed rule set (with the earlier versions its open
flows may still run on), else the rule paths (or the bundled recipes), stored as
version 1. :func:`recover`: the checkpointed states (with their timers) into their
partitions and the segment index, then the journal after each partition's checkpoint
position, replayed through the same deterministic core. Timers that came due while the
process was down fire right after, from the partition loops, and their lateness is
observed in a metric.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from connectors.routing import Router
from engine.clock import Clock
from engine.embedded.outbox import Outbox
from engine.embedded.queues import partition_of
from engine.embedded.storage.sqlite import SqliteStore
from engine.metrics import Metrics
from engine.partition import Partition
from engine.segment_index import SegmentIndex
from engine.types import Event
from rules.loader import rule_files
from rules.ruleset import RuleSet, load_ruleset, load_stored
from state.customer import CustomerState

__all__ = ["load_rules", "recover"]

logger = logging.getLogger(__name__)

_journal_batch = msgspec.json.Decoder(list[Event | None])

Run = Callable[..., Awaitable[Any]]  # runs a store call on its database's thread


async def load_rules(
    store: SqliteStore, db: Run, router: Router, paths: list[str] | None, clock: Clock
) -> tuple[int, dict[str, str], RuleSet]:
    """(version, files, rule set) to start with: the latest deployed, else ``paths``
    (the bundled recipes when empty) saved as the first version. Raises RuleErrors
    (and a missing sink address) as a deploy would."""
    latest = await db(store.latest_rules)
    if latest is not None:
        version, files = latest
        # with the earlier rule versions its open flows may still run on
        archive = await db(store.rules_archive, version)
        ruleset = load_stored(sorted(files.items()), version, archive)
        ruleset.require_addresses(router.needs_address)
        return version, files, ruleset
    rs = load_ruleset(paths)
    files = {str(f): f.read_text(encoding="utf-8") for f in rule_files(paths or [str(_recipes())])}
    version = await db(store.save_rules, clock.now(), files)
    rs.require_addresses(router.needs_address)
    return version, files, rs


async def recover(
    parts: list[Partition],
    store: SqliteStore,
    db: Run,
    jdb: Run,
    segment_index: SegmentIndex | None,
    outbox: Outbox,
    metrics: Metrics,
    clock: Clock,
) -> None:
    """Restore ``parts`` (and ``segment_index``) from the checkpoint, then replay the
    journal after each partition's position; the replay's actions reach ``outbox``,
    flushed before returning. ``db``/``jdb`` run on the state/journal threads."""
    t0 = time.perf_counter()
    n = len(parts)
    states = await db(lambda: list(store.load_states()))
    owned: list[list[CustomerState]] = [[] for _ in range(n)]
    for st in states:
        owned[partition_of(st.customer_id, n)].append(st)
    for p in parts:
        p.recover(owned[p.index])
    if segment_index is not None:  # before the replay: it follows its changes
        segment_index.load(states, clock.now())
    seqs = await db(store.checkpoint_seqs)
    if sorted(seqs) != list(range(n)):  # first start, or partition count changed
        floor = min(seqs.values(), default=0)
        seqs = dict.fromkeys(range(n), floor)
    for p in parts:
        p.position = seqs[p.index]
    floor = min(seqs.values())
    rows = await jdb(lambda: list(store.journal_after(floor)))
    replayed = 0
    for first, accepted_at, body in rows:
        try:
            events = _journal_batch.decode(body)
        except msgspec.MsgspecError:
            logger.error("journal row %d no longer decodes; skipped", first)
            continue
        for i, ev in enumerate(events):
            if ev is None:  # erased
                metrics.events_erased_skipped.inc()
                continue
            part = parts[partition_of(ev.customer_id, n)]
            if first + i > part.position:
                part.apply(first + i, accepted_at, ev)
                replayed += 1
    await outbox.flush()
    gc.freeze()
    logger.info(
        "recovered %d customers, replayed %d journal entries in %.2fs",
        len(states),
        replayed,
        time.perf_counter() - t0,
    )


def _recipes() -> Path:
    from rules.ruleset import RECIPES_DIR

    return RECIPES_DIR
