"""What the embedded runtime keeps of the recent past, read for the console and the export.

The runtime journals every accepted event (``journal.db``: one row per request, a JSON
array, kept ``journal_retention_days`` and until checkpointed) and keeps actions in its
outbox (``state.db``: pending, then sent for a day). Nothing keeps a per-customer history,
so the console reads these through its own read-only SQLite connections (WAL: readers never
block the runtime's writers), newest first and bounded:

- :func:`last_events`: the last N events as JSON lines, for the backtest preview;
- :func:`customer_events`: one customer's events among the last ``scan`` events accepted;
- :func:`customer_actions`: one customer's actions still in the outbox;
- :class:`JournalHistory`: both, as the console's timeline source, and the last events
  for its rule preview (engine/analytics/source.py ``HistorySource``, ``RecentEvents``;
  ``nudge run`` passes it to ``create_app(history=...)``);
- :func:`customer_record`: everything of one customer in the journal, the outbox, the
  dead-letter store and the actions file, in full, for ``GET /v1/customers/{id}/export``.

All of them are blocking: call them in a thread. With encryption at rest they open the
bodies with the sealer of the store that opened the data directory in this process
(engine/embedded/storage/crypt.py ``registered``); without one, a sealed body raises
DataKeyError.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson

from engine.analytics.source import CustomerHistory
from engine.embedded.storage.crypt import opener, registered

__all__ = [
    "JournalHistory",
    "customer_actions",
    "customer_events",
    "customer_record",
    "last_events",
]

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


class _Head(msgspec.Struct):
    customer_id: str = ""
    type: str = ""
    event_id: str = ""
    timestamp: str = ""


_head = msgspec.json.Decoder(_Head)


@contextlib.contextmanager
def _readonly(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        yield db
    finally:
        db.close()


def _rows_newest_first(data_dir: Path, max_events: int) -> Iterator[tuple[int, list[bytes]]]:
    """(accepted_at ms, the request's events newest first) until ``max_events`` read."""
    path = data_dir / "journal.db"
    if not path.exists():
        return
    seen = 0
    open_ = opener(registered(data_dir))
    with _readonly(path) as db:
        cur = db.execute("SELECT accepted_at, body FROM journal ORDER BY seq DESC")
        for accepted_at, body in cur:
            try:
                raws = _raw_list.decode(open_(bytes(body)))
            except msgspec.MsgspecError:
                continue
            events = [bytes(r) for r in reversed(raws) if bytes(r) != b"null"]  # null: erased
            yield int(accepted_at), events
            seen += len(events)
            if seen >= max_events:
                return


def last_events(data_dir: Path, n: int) -> list[bytes]:
    """The last ``n`` events accepted, oldest first, one JSON object each."""
    out: list[bytes] = []
    for _, events in _rows_newest_first(data_dir, n):
        out.extend(events)
    out = out[:n]
    out.reverse()
    return out


def customer_events(
    data_dir: Path, customer_id: str, scan: int, limit: int = 100
) -> list[dict[str, Any]]:
    """``customer_id``'s events among the last ``scan`` accepted, newest first (at most
    ``limit``): ``{"type", "event_id", "timestamp", "accepted_at"}`` (no properties)."""
    out: list[dict[str, Any]] = []
    for accepted_at, events in _rows_newest_first(data_dir, scan):
        for raw in events:
            try:
                head = _head.decode(raw)
            except msgspec.MsgspecError:
                continue
            if head.customer_id == customer_id:
                out.append(
                    {
                        "type": head.type,
                        "event_id": head.event_id,
                        "timestamp": head.timestamp,
                        "accepted_at": accepted_at,
                    }
                )
                if len(out) >= limit:
                    return out
    return out


def customer_actions(data_dir: Path, customer_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """``customer_id``'s actions in the outbox (pending, dead or sent in the last day),
    newest first: ``{"rule_id", "channel", "template", "variant", "fire_at", "status"}``."""
    path = data_dir / "state.db"
    if not path.exists():
        return []
    with _readonly(path) as db:
        rows = db.execute(
            "SELECT body, status FROM outbox WHERE customer_id = ? ORDER BY cause_at DESC LIMIT ?",
            (customer_id, limit),
        ).fetchall()
    out = []
    open_ = opener(registered(data_dir))
    for body, status in rows:
        try:
            a = orjson.loads(open_(bytes(body)))
        except orjson.JSONDecodeError:
            continue
        if not isinstance(a, dict):
            continue
        out.append(
            {
                "rule_id": a.get("rule_id"),
                "channel": a.get("channel"),
                "template": a.get("template"),
                "variant": a.get("variant"),
                "fire_at": a.get("fire_at"),
                "status": str(status),
            }
        )
    out.sort(key=lambda a: a["fire_at"] or 0, reverse=True)
    return out


class JournalHistory:
    """The timeline source of a data directory: :func:`customer_events` among the last
    ``scan`` events journaled and :func:`customer_actions`; and :func:`last_events` for
    the rule preview; read in a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def recent_events(self, n: int) -> list[bytes]:
        return await asyncio.to_thread(last_events, self.data_dir, n)

    async def customer_history(self, customer_id: str, scan: int) -> CustomerHistory:
        events = await asyncio.to_thread(customer_events, self.data_dir, customer_id, scan)
        actions = await asyncio.to_thread(customer_actions, self.data_dir, customer_id)
        return CustomerHistory(
            events,
            actions,
            f"Events found among the last {scan:,} events the journal still holds (kept up "
            "to its retention and until checkpointed), actions still in the outbox "
            "(pending, failed, or sent in the last day), and the flows this customer is in. "
            "Older history is not kept per customer.",
        )


def customer_record(data_dir: Path, customer_id: str) -> dict[str, list[Any]]:
    """Everything the data directory holds of ``customer_id`` besides its state, in full
    (the right of access: no bound): the events still journaled (as sent, with their
    acceptance time), the actions in the outbox (with their status), the dead letters,
    and the lines of the default actions file (``actions.jsonl``)."""
    events: list[Any] = []
    for accepted_at, raws in _rows_newest_first(data_dir, 1 << 62):
        for raw in raws:
            try:
                head = _head.decode(raw)
            except msgspec.MsgspecError:
                continue
            if head.customer_id == customer_id:
                events.append({"accepted_at": accepted_at, "event": orjson.loads(raw)})
    events.reverse()  # oldest first
    outbox: list[Any] = []
    open_ = opener(registered(data_dir))
    path = data_dir / "state.db"
    if path.exists():
        with _readonly(path) as db:
            rows = db.execute(
                "SELECT body, status FROM outbox WHERE customer_id = ? ORDER BY cause_at",
                (customer_id,),
            ).fetchall()
        outbox = [
            {"status": str(status), "action": orjson.loads(open_(bytes(body)))}
            for body, status in rows
        ]
    dead: list[Any] = []
    path = data_dir / "deadletter.db"
    if path.exists():
        with _readonly(path) as db:
            for action, error, failed_at in db.execute(
                "SELECT action, error, failed_at FROM dead_letters ORDER BY failed_at"
            ):
                a = orjson.loads(open_(bytes(action)))
                if isinstance(a, dict) and a.get("customer_id") == customer_id:
                    if isinstance(error, bytes):  # sealed
                        error = open_(error).decode()
                    dead.append({"failed_at": failed_at, "error": error, "action": a})
    sent: list[Any] = []
    path = data_dir / "actions.jsonl"
    if path.exists():
        needle = orjson.dumps(customer_id)
        with path.open("rb") as fh:
            for line in fh:
                if needle in line:  # cheap filter, then the exact field
                    with contextlib.suppress(orjson.JSONDecodeError):
                        a = orjson.loads(line)
                        if isinstance(a, dict) and a.get("customer_id") == customer_id:
                            sent.append(a)
    return {"events": events, "outbox": outbox, "dead_letters": dead, "actions_file": sent}
