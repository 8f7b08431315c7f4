"""One customer, on ``nudge run``: their view, their export, their erasure.

The customer API's embedded side (engine/http/app.py, the console): :func:`view` for
``GET /v1/customers/{id}``, :func:`export` for ``GET /v1/customers/{id}/export`` and
:func:`erase` for ``DELETE /v1/customers/{id}`` (docs/operations.md, "Erasure"). Each
takes the runtime (:class:`Host`: what they read of it) once it has started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from connectors.deadletter import DeadLetterStore
from connectors.routing import Router
from engine.clock import Clock
from engine.customer_view import customer_json
from engine.embedded.checkpoints import Checkpoints
from engine.embedded.config import RuntimeConfig
from engine.embedded.history import customer_record
from engine.embedded.outbox import Outbox
from engine.embedded.storage.sqlite import SqliteStore
from engine.embedded.storage.suppression import Suppression
from engine.metrics import Metrics
from engine.partition import Partition
from engine.segment_index import SegmentIndex
from rules.ruleset import RuleSet

__all__ = ["Host", "erase", "export", "view"]


class Host(Protocol):
    """What the customer operations read of the runtime (engine/embedded/runtime.py's
    ``Runtime``), started: its partitions, rule set, segment index, stores, outbox,
    checkpoints and sinks."""

    cfg: RuntimeConfig
    clock: Clock
    metrics: Metrics
    ruleset: RuleSet | None
    segment_index: SegmentIndex | None
    store: SqliteStore | None
    dead: DeadLetterStore
    suppression: Suppression
    router: Router
    outbox: Outbox
    checkpoints: Checkpoints

    def partition(self, customer_id: str) -> Partition: ...

    def db(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...

    def jdb(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...


async def view(rt: Host, customer_id: str) -> tuple[int, dict[str, Any]]:
    """(status, body) of ``GET /v1/customers/{id}``: the customer's view, or 404."""
    st = rt.partition(customer_id).store.get(customer_id)
    if st is None or rt.ruleset is None:
        return 404, {"error": {"code": "not_found", "message": f"no customer {customer_id!r}"}}
    return 200, customer_json(st, rt.ruleset, rt.clock.now())


async def export(rt: Host, customer_id: str) -> tuple[int, dict[str, Any]]:
    """(status, body) of ``GET /v1/customers/{id}/export``: the customer's view (profile,
    consent and its last changes, cart, flows, timers, segments) and everything the
    data directory holds of them (engine/embedded/history.py ``customer_record``)."""
    status, shown = await view(rt, customer_id)
    record = await asyncio.to_thread(customer_record, rt.cfg.data_dir, customer_id)
    if status == 404 and not any(record.values()):
        return status, shown
    st = rt.partition(customer_id).store.get(customer_id)
    return 200, {
        "customer_id": customer_id,
        "runtime": "embedded",
        "state": shown if status == 200 else None,
        "segments": dict(sorted((st.segments or {}).items())) if st is not None else {},
        **record,
    }


async def erase(rt: Host, customer_id: str, suppress: bool = False) -> dict[str, Any]:
    """Erase a customer everywhere in the data directory: state and timers (memory and
    checkpoint), journal entries, every outbox row, dead letters, the default
    actions file's lines, and the SQLite WAL files that held older page images
    (docs/operations.md, "Erasure"). The customer's id may come back later as a new,
    empty customer whose actions flow at once, unless ``suppress``: then its later
    events are dropped at the edge (state/suppression.py), the id kept only hashed."""
    store = rt.store
    assert store is not None
    had_state = rt.partition(customer_id).erase(customer_id)
    if rt.segment_index is not None:
        rt.segment_index.drop(customer_id)
    rt.outbox.erased.add(customer_id)
    await rt.checkpoints.erase(customer_id)  # a writer still running finishes first
    counts: dict[str, int] = await rt.db(store.erase_customer, customer_id)
    counts["journal"] = await rt.jdb(store.erase_from_journal, customer_id)
    dead = await rt.db(rt.dead.erase_customer, customer_id)
    lines = 0
    for sink in rt.router.sinks.values():
        redact = getattr(sink, "redact", None)  # a file sink (connectors/sinks/jsonl.py)
        if redact is not None:
            lines += await redact(customer_id)
    # actions of the customer still in memory (queued before its rows were deleted)
    # go, and the mark with them: a customer seen again gets its new actions
    rt.outbox.purge(customer_id)
    rt.outbox.erased.discard(customer_id)
    if suppress:
        await rt.db(rt.suppression.add, customer_id, rt.clock.now())
    await rt.db(store.truncate_wals)
    rt.metrics.customers_erased.inc()
    return {
        "customer_id": customer_id,
        "state": had_state,
        "journal_entries": counts["journal"],
        "pending_actions": counts["outbox"],
        "checkpoint": counts["states"],
        "outbox_rows": counts["outbox_rows"],
        "dead_letters": dead,
        "actions_file_lines": lines,
        "suppressed": suppress,
    }
