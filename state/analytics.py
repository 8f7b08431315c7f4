"""Campaign analytics cells: exact counts per rule x version x variant x step x metric x
hour, as the core's notes produce them (engine/analytics/observe.py) and the reports read
them (engine/analytics/report.py). The embedded runtime keeps them in ``states.db``
(engine/embedded/storage/analytics.py, which explains how they travel with checkpoints).

A customer's counts since its last checkpoint travel as a state row whose id is
``PENDING_PREFIX + customer_id`` (``pending_row``), split off again by the writer
(``split_pending``). In a paced checkpoint's spool they travel under note ids instead
(``ids_row``, after the ``notes_row`` that names them), and the writer process makes the
pending rows of them (``IdRows``): the cells are built off the event loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import msgspec

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "HOUR_RETENTION_DAYS",
    "PENDING_PREFIX",
    "SUMMARY",
    "Cell",
    "Counted",
    "DayTotals",
    "IdRows",
    "Period",
    "counter",
    "id_cells",
    "ids_row",
    "is_pending",
    "notes_row",
    "pending_cells",
    "pending_row",
    "split_pending",
    "summary_index",
]

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HOUR_RETENTION_DAYS = 8  # the report's hourly granularity covers the last 7 days
PENDING_PREFIX = "\x00analytics:"
"""State rows whose id starts with this carry a customer's pending counts (no customer id
starts with a NUL: ids are validated text)."""

Cell = tuple[str, int, str, int, str, int]
"""(rule id, rule version, variant, step, metric, hour): one counter. ``step`` is the
compiled op index of the step (-1: the rule as a whole), ``hour`` the hour number since
the epoch (ms // HOUR_MS) of the processing time."""

Counted = tuple[str, int, str, int, str, int, int]
"""(*cell, count): a count as a pending row holds it (``pending_row``, ``pending_cells``)."""

Period = tuple[int, str, int, list[tuple[str, int, str, int]]]
"""(day or hour number, rule id, version, [(variant, step, metric, count)])."""

SUMMARY = ("entered", "sends", "suppressed", "holdout", "conversions", "cents")
"""The all-rules report's figures, in ``analytics_day_totals``' column order."""

DayTotals = tuple[int, str, int, tuple[int, ...]]
"""(day, rule id, version, the ``SUMMARY`` figures)."""

_summary_index: dict[str, int | None] = {}


def summary_index(metric: str) -> int | None:
    """Which ``SUMMARY`` figure a metric adds to (None: none): ``entered``, ``sent:*``,
    ``suppressed:*``, ``holdout``, ``conversions``, ``revenue_cents``."""
    i = _summary_index.get(metric, -1)
    if i == -1:
        if metric.startswith("sent:"):
            i = 1
        elif metric.startswith("suppressed:"):
            i = 2
        else:
            i = {"entered": 0, "holdout": 3, "conversions": 4, "revenue_cents": 5}.get(metric)
        if len(_summary_index) < 10_000:
            _summary_index[metric] = i
    return i


_enc = msgspec.msgpack.Encoder()
_cells = msgspec.msgpack.Decoder(list[tuple[str, int, str, int, str, int, int]])

NOTES_PREFIX = "\x00notes:"
IDS_PREFIX = "\x00ids:"
Note = tuple[str, int, str, int, str]
"""A cell without its hour (engine.output.Note)."""
_notes = msgspec.msgpack.Decoder(tuple[int, list[Note]])
_ids = msgspec.msgpack.Decoder(list[tuple[int, dict[int, int]]])


def pending_row(customer_id: str, counts: list[Counted]) -> tuple[str, bytes]:
    """The state-row form of a customer's pending counts."""
    return PENDING_PREFIX + customer_id, _enc.encode(counts)


def counter(counts: Iterable[Counted]) -> Counter[Cell]:
    """``counts`` summed by cell."""
    out: Counter[Cell] = Counter()
    for rid, version, variant, step, metric, hour, n in counts:
        cell = (rid, version, variant, step, metric, hour)
        out[cell] = out.get(cell, 0) + n
    return out


def is_pending(row_id: str) -> bool:
    """Whether a state row carries campaign counts (in any form: ``pending_row``,
    ``ids_row``, ``notes_row``) rather than a customer's state."""
    return row_id.startswith((PENDING_PREFIX, IDS_PREFIX, NOTES_PREFIX))


def pending_cells(body: bytes) -> list[Counted]:
    """A pending row's counts: ``(*cell, count)`` each (a cell appears once a row)."""
    return _cells.decode(body)


def split_pending(
    rows: list[tuple[str, bytes]],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(state rows, pending-count rows keyed by customer id) of one chunk."""
    if not any(r[0].startswith(PENDING_PREFIX) for r in rows):
        return rows, []
    cut = len(PENDING_PREFIX)
    states = [r for r in rows if not r[0].startswith(PENDING_PREFIX)]
    pending = [(r[0][cut:], r[1]) for r in rows if r[0].startswith(PENDING_PREFIX)]
    return states, pending


def id_cells(notes: list[Note], hours: list[tuple[int, dict[int, int]]]) -> list[Counted]:
    """Counts kept under note ids ([(hour, {note id: count})], ids indexing ``notes``) as
    counted cells, each once; zero counts left out."""
    return [(*notes[i], hour, n) for hour, counts in hours for i, n in counts.items() if n]


def notes_row(table: int, start: int, notes: list[Note]) -> tuple[str, bytes]:
    """A spool row naming the note ids ``start``, ``start + 1``, ... of note table
    ``table`` (a partition's tally) for the ``ids_row``s after it."""
    return f"{NOTES_PREFIX}{table}", _enc.encode((start, notes))


def ids_row(table: int, key: str, hours: list[tuple[int, dict[int, int]]]) -> tuple[str, bytes]:
    """A spool row of the pending counts kept under ``key`` (a customer id, or a
    partition's orphan key): [(hour, {note id: count})], ids of note table ``table``."""
    return f"{IDS_PREFIX}{table}:{key}", _enc.encode(hours)


class IdRows:
    """The writer's side of ``notes_row`` / ``ids_row``: a spool's chunks, read in order,
    with each ``ids_row`` made the ``pending_row`` it stands for and the note tables
    dropped. A note id no table row named is an error (``ValueError``): the spool is
    refused, never written with counts lost."""

    def __init__(self) -> None:
        self._tables: dict[str, list[Note]] = {}

    def resolve(self, rows: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        if not any(r[0].startswith((NOTES_PREFIX, IDS_PREFIX)) for r in rows):
            return rows
        out: list[tuple[str, bytes]] = []
        for key, body in rows:
            if key.startswith(NOTES_PREFIX):
                start, notes = _notes.decode(body)
                table = self._tables.setdefault(key[len(NOTES_PREFIX) :], [])
                if start != len(table):
                    raise ValueError(
                        f"spool note table {key!r}: ids from {start}, {len(table)} known"
                    )
                table += notes
            elif key.startswith(IDS_PREFIX):
                name, _, cid = key[len(IDS_PREFIX) :].partition(":")
                table = self._tables.get(name, [])
                try:
                    cells = id_cells(table, _ids.decode(body))
                except IndexError:
                    raise ValueError(
                        f"spool counts of {cid!r}: a note id not in table {name}"
                    ) from None
                out.append(pending_row(cid, cells))
            else:
                out.append((key, body))
        return out
