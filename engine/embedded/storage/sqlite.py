"""The embedded runtime's durable store: standard-library SQLite in WAL mode.

Three files. ``journal.db``: ``journal`` (accepted requests, one row per request: a JSON
array of events whose seqs are ``seq``, ``seq + 1``, ...; an erased customer's events
become ``null``). ``states.db``: ``states`` (customer state checkpoints) and ``meta``
(checkpoint positions). ``state.db``: ``outbox`` (actions by idempotency key, so a replay
never queues one twice), ``rules`` (deployed rule set versions) and ``rules_archive``
(the earlier rule versions each deploy keeps: rules/versions.py). A data directory from
before ``states.db`` existed has its states and positions moved there on first open.

Each file has its own lock, so a checkpoint's bulk write never delays the ingest path's
group commits (journal) nor the outbox's writes (actions on their way to a sink). Order
across files is what keeps a crash harmless: the actions produced by the events a
checkpointed state includes are committed to the outbox before that state.

All methods are blocking and must be called from one thread (the runtime gives this store
a dedicated single-thread executor). ``synchronous=FULL`` makes a commit durable against
power loss, not only against a process crash; ``NORMAL`` trades that for speed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson

from engine.embedded.storage.analytics import (
    ANALYTICS_SCHEMA,
    fold,
    folds,
    prune,
    read_day_totals,
    read_periods,
    write_pending,
)
from engine.embedded.storage.crypt import (
    Sealer,
    check_key,
    opener,
    register,
    seal_outbox,
    seal_states,
)
from engine.embedded.storage.journal_index import JournalIndex
from state.analytics import DayTotals, Period, split_pending
from state.customer import CustomerState, load

logger = logging.getLogger(__name__)

__all__ = ["JournalEntry", "OutboxEntry", "SqliteStore", "write_snapshot"]

_T = TypeVar("_T")

JournalEntry = tuple[int, int, bytes]  # first seq, accepted_at ms, JSON array of events
OutboxEntry = tuple[str, bytes, int]  # idempotency key, action JSON, accepted_at of cause


class _Cid(msgspec.Struct):
    customer_id: str


_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_cid = msgspec.json.Decoder(_Cid)

_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""
_STATES_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS states (customer_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    # campaign analytics (engine/embedded/storage/analytics.py), committed with the states
    + ANALYTICS_SCHEMA
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    body BLOB NOT NULL,
    cause_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
);
-- prune deletes sent actions older than a day as a range of this index
CREATE INDEX IF NOT EXISTS outbox_status_cause ON outbox (status, cause_at);
-- an erase deletes a customer's rows without reading the table (1M rows: ~0.5 s)
CREATE INDEX IF NOT EXISTS outbox_customer ON outbox (customer_id);
DROP INDEX IF EXISTS outbox_status;
CREATE TABLE IF NOT EXISTS rules (
    version INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    files BLOB NOT NULL
);
-- per deployed version: the earlier rule versions it keeps (JSON; none before it existed)
CREATE TABLE IF NOT EXISTS rules_archive (
    version INTEGER PRIMARY KEY,
    archive BLOB NOT NULL
);
"""


def _connect(path: Path, synchronous: str, schema: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # deleted content is overwritten, not left in free pages (an erased customer's
    # data must not be readable in the file: docs/operations.md, "Erasure")
    db.execute("PRAGMA secure_delete=ON")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db


# Rows per multi-row statement: 4 columns x 200 stays far below SQLite's limit of
# 32,766 bound variables.
_ROWS_PER_STATEMENT = 200


@functools.lru_cache(maxsize=256)
def _values(columns: int, rows: int) -> str:
    one = "(" + ",".join("?" * columns) + ")"
    return ",".join([one] * rows)


@functools.lru_cache(maxsize=256)
def _marks(n: int) -> str:
    return ",".join("?" * n)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (the
    connections are in autocommit mode: ``isolation_level=None``)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")  # may fail too (a full disk): rolled back below
    except BaseException:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): a second
        # ROLLBACK would raise and hide the cause; one left open would refuse every
        # later BEGIN
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``head`` (``INSERT ... (cols) VALUES``) for ``rows`` in a few multi-row statements.

    Why not ``executemany``: the sqlite3 module releases the GIL around every step, so
    ``executemany`` of k rows takes the GIL back k times, and each time it waits for the
    event loop's thread to give it up (up to the 5 ms switch interval while the loop is
    busy): a group commit of 9 requests measured 15-25 ms under load, for a 0.2 ms fsync.
    One statement is one step."""
    if not rows:
        return
    width = len(rows[0])
    for i in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[i : i + _ROWS_PER_STATEMENT]
        db.execute(f"{head} {_values(width, len(chunk))}", [v for row in chunk for v in row])


def _outbox_add(db: sqlite3.Connection, entries: list[tuple[str, str, bytes, int]]) -> None:
    _insert_rows(
        db, "INSERT OR IGNORE INTO outbox (key, customer_id, body, cause_at) VALUES", entries
    )


def _set_status(db: sqlite3.Connection, keys: Sequence[str], status: str) -> None:
    """``status`` for every one of ``keys``, one statement per 500 keys (see _insert_rows)."""
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        db.execute(
            f"UPDATE outbox SET status = ? WHERE key IN ({_marks(len(chunk))})", [status, *chunk]
        )


def _write_states(
    sdb: sqlite3.Connection,
    states: Iterable[list[tuple[str, bytes]]],
    deleted: Iterable[str],
    seqs: dict[int, int],
    erased_after: Iterable[str] = (),
    fold_counts: bool = False,
) -> int:
    """In one transaction of ``states.db``: erasures first (a customer erased and then
    seen again keeps its new state), the states, ``erased_after`` (customers erased while
    a paced checkpoint packed: a state packed before the erasure must not stay), the
    replay positions; with ``fold_counts`` (a checkpoint's last transaction), the pending
    campaign counts folded into the totals (engine/embedded/storage/analytics.py)."""
    delete = "DELETE FROM states WHERE customer_id = ?"
    with _transaction(sdb):
        sdb.executemany(delete, ((cid,) for cid in deleted))
        n = 0
        for chunk in states:
            # analytics: a customer's pending counts ride in its states' chunk
            chunk, pending = split_pending(chunk)
            write_pending(sdb, pending)
            _insert_rows(sdb, "INSERT OR REPLACE INTO states (customer_id, body) VALUES", chunk)
            n += len(chunk)
        sdb.executemany(delete, ((cid,) for cid in erased_after))
        sdb.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            ((f"checkpoint_seq:{p}", str(s)) for p, s in seqs.items()),
        )
        if fold_counts:
            t0 = time.perf_counter()
            folded = fold(sdb)
            if folded:
                logger.debug(
                    "analytics: %d pending rows folded in %.3fs", folded, time.perf_counter() - t0
                )
    return n


# States per transaction when a writer process commits a checkpoint (~1 MB of WAL): each
# commit's fsyncs are short. One transaction of 100,000 states (~50 MB) made two fsyncs of
# 30-40 ms, and the engine's journal and outbox fsyncs, on the same file system, waited for
# them (ext4 orders the commits).
STATES_PER_COMMIT = 2_000


def _write_states_in_steps(
    sdb: sqlite3.Connection,
    chunks: Iterable[list[tuple[str, bytes]]],
    deleted: list[str],
    seqs: dict[int, int],
    erased_after: Iterable[str],
    per_commit: int,
    pause: float,
) -> int:
    """``_write_states`` in transactions of ``per_commit`` states (``pause`` seconds
    between them), the replay positions in the last. A crash part way leaves some states
    newer than the stored positions, which a replay handles as it does after any fuzzy
    checkpoint: a state records its last seq, and the events it holds are skipped. The
    states of ``erased_after`` customers are left out, so no step re-creates one of them;
    the last step deletes them too."""
    gone = set(erased_after)
    n = 0
    step: list[tuple[str, bytes]] = []
    first = deleted
    steps = 0
    for chunk in chunks:
        step.extend(row for row in chunk if row[0] not in gone)
        if len(step) >= per_commit:
            n += _write_states(sdb, [step], first, {})
            steps += 1
            logger.debug("checkpoint writer: step %d committed, %d states", steps, n)
            step, first = [], []
            if pause:
                time.sleep(pause)
    n += _write_states(sdb, [step], first, seqs, gone, fold_counts=True)
    logger.debug("checkpoint writer: positions committed, %d states", n)
    return n


def write_snapshot(
    data_dir: str | Path,
    synchronous: str,
    outbox: list[tuple[str, str, bytes, int]],
    deleted: list[str],
    chunks: Iterable[list[tuple[str, bytes]]],
    seqs: dict[int, int],
    erased_after: Iterable[str] = (),
    per_commit: int = STATES_PER_COMMIT,
    pause: float = 0.0,
) -> int:
    """Write one checkpoint, from the writer process (engine/embedded/spool.py), through
    connections of its own. Returns how many states were written.

    First the actions the checkpoint's events produced go to the outbox (``state.db``, a
    short transaction; keys already there are kept): a replay skips the events a stored
    state includes, so it would not re-create them. Then erasures, the states and the
    replay positions in ``states.db``, ``per_commit`` states per transaction and
    ``pause`` seconds between them (``_write_states_in_steps``): a crash before the last
    leaves the previous positions, and states at least as new."""
    path = Path(data_dir)
    if outbox:  # none: nothing to lock state.db for (the engine's outbox flushes use it)
        db = sqlite3.connect(path / "state.db", timeout=60.0, isolation_level=None)
        try:
            db.execute("PRAGMA secure_delete=ON")
            db.execute(f"PRAGMA synchronous={synchronous}")
            with _transaction(db):
                _outbox_add(db, outbox)
        finally:
            db.close()
    sdb = sqlite3.connect(path / "states.db", timeout=60.0, isolation_level=None)
    try:
        sdb.execute("PRAGMA secure_delete=ON")
        sdb.execute(f"PRAGMA synchronous={synchronous}")
        return _write_states_in_steps(sdb, chunks, deleted, seqs, erased_after, per_commit, pause)
    finally:
        sdb.close()


def _migrate_states(db: sqlite3.Connection, sdb: sqlite3.Connection) -> None:
    """Move states and positions from ``state.db`` (data directories from before
    ``states.db``) when ``states.db`` holds none yet; the copy commits before the delete,
    so a crash in between only leaves a stale copy that the next open removes."""
    old = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='states'")
    if old.fetchone() is None:
        return
    if sdb.execute("SELECT 1 FROM meta LIMIT 1").fetchone() is None:
        rows = db.execute("SELECT customer_id, body FROM states").fetchall()
        meta = db.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint_seq:%'")
        seqs = {int(k.split(":")[1]): int(v) for k, v in meta}
        if not rows and not seqs:
            return
        _write_states(sdb, [rows], [], seqs)
    db.execute("DELETE FROM states")
    db.execute("DELETE FROM meta WHERE key LIKE 'checkpoint_seq:%'")


class SqliteStore:
    """The journal in ``journal.db``; checkpoints, outbox and rule versions in ``state.db``.

    Two files, so bulk checkpoint writes never hold the lock (or the WAL) that the ingest
    path's group commits need. Journal methods (``append``, ``journal_after``,
    ``trim_journal``, ``erase_from_journal``) use one connection and must be called from
    one thread; all others use the second connection, from a second thread."""

    def __init__(
        self, data_dir: str | Path, synchronous: str = "FULL", sealer: Sealer | None = None
    ) -> None:
        self.path = Path(data_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.jdb = _connect(self.path / "journal.db", synchronous, _JOURNAL_SCHEMA)
        self.db = _connect(self.path / "state.db", synchronous, _SCHEMA)
        self.sdb = _connect(self.path / "states.db", synchronous, _STATES_SCHEMA)
        # encryption at rest (engine/embedded/storage/crypt.py): bodies sealed on the way
        # in, opened on the way out; a missing or wrong key stops here (DataKeyError)
        self.sealer = sealer
        self._open = opener(sealer)
        try:
            check_key(self.sdb, sealer, self.path)
        except BaseException:
            self.jdb.close()
            self.db.close()
            self.sdb.close()
            raise
        register(self.path, sealer)
        _migrate_states(self.db, self.sdb)
        with _transaction(self.sdb):  # a crash between a checkpoint's steps left some
            fold(self.sdb)
        row = self.jdb.execute("SELECT seq + n FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        # appends are this connection's alone. A journal trimmed to nothing (every row
        # checkpointed and past retention) goes on after the stored positions: a seq given
        # again would be taken for an event the states hold (Partition.apply skips it)
        after = max(self.checkpoint_seqs().values(), default=0) + 1
        self._next_seq = max(int(row[0]), after) if row else after
        # which journal rows hold which customers' events, for erasure (refresh_index)
        self.journal_index = JournalIndex(
            self.path / "journal.db",
            open_body=None if sealer is None else sealer.open,
            empty_from=0 if row else self._next_seq,
        )

    def _seal(self, body: bytes) -> bytes:
        return body if self.sealer is None else self.sealer.seal(body)

    def close(self) -> None:
        register(self.path, None)
        self.journal_index.close()
        self.jdb.close()
        self.db.close()
        self.sdb.close()

    # --- journal -------------------------------------------------------------------
    def append(self, accepted_at: int, batches: list[tuple[int, bytes]]) -> int:
        """Append requests ((event count, JSON array), ...) in one transaction; returns the
        seq of the first event. Seqs are consecutive across the batches."""
        db = self.jdb
        first = self._next_seq
        rows = []
        seq = first
        seal = None if self.sealer is None else self.sealer.seal
        for n, body in batches:
            rows.append((seq, n, accepted_at, body if seal is None else seal(body)))
            seq += n
        head = "INSERT INTO journal (seq, n, accepted_at, body) VALUES"
        if len(rows) <= _ROWS_PER_STATEMENT:  # the usual case: one statement, autocommit
            _insert_rows(db, head, rows)
        else:
            with _transaction(db):
                _insert_rows(db, head, rows)
        self._next_seq = seq
        return first

    def journal_after(self, seq: int, batch: int = 1000) -> Iterator[JournalEntry]:
        """Journal rows holding events with seq > ``seq``, in order."""
        row = self.jdb.execute(
            "SELECT seq FROM journal WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (seq,)
        ).fetchone()
        at = int(row[0]) - 1 if row else 0
        while True:
            rows = self.jdb.execute(
                "SELECT seq, accepted_at, body FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
                (at, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield int(r[0]), int(r[1]), self._open(bytes(r[2]))
            at = int(rows[-1][0])

    def trim_journal(
        self, upto_seq: int, before: int, page: int = 1000, pages: int | None = None
    ) -> int:
        """Delete journal rows whose events are all at or below ``upto_seq`` (checkpointed)
        and that were accepted before ``before`` (retention); at most ``pages`` pages of
        ``page`` rows (None: all). Returns how many rows were deleted.

        Rows are appended in seq order with their acceptance time, so the rows to delete are
        a prefix of the table: it is walked from the oldest row by the primary key, ``page``
        rows at a time, and deleted as a key range. The rows that stay are never scanned
        (a predicate over ``seq + n`` or ``accepted_at`` scanned the whole retained journal,
        on the thread that also runs the group commits, after every checkpoint). A clock
        stepping back can only end the prefix early: a row is then kept longer, never
        deleted early."""
        db = self.jdb
        deleted = 0
        left = pages
        while left is None or left > 0:
            if left is not None:
                left -= 1
            cut, more = None, False
            rows = db.execute(
                "SELECT seq, n, accepted_at FROM journal ORDER BY seq LIMIT ?", (page,)
            )
            for i, (seq, n, accepted_at) in enumerate(rows, 1):  # read lazily: stop early
                if seq + n - 1 > upto_seq or accepted_at >= before:
                    break
                cut, more = seq, i == page
            rows.close()
            if cut is None:
                return deleted
            deleted += db.execute("DELETE FROM journal WHERE seq <= ?", (cut,)).rowcount
            if not more:
                return deleted
        return deleted

    def rewrite_journal(self, fn: Callable[[bytes], bytes | None]) -> int:
        """Rewrite journal bodies: ``fn`` returns a new body, or None to keep it. Returns
        how many rows changed (customer erasure; rare, scans the retained journal)."""
        db = self.jdb
        changed = 0
        with _transaction(db):
            for seq, body in db.execute("SELECT seq, body FROM journal").fetchall():
                new = fn(self._open(bytes(body)))
                if new is not None:
                    new = self._seal(new)
                    db.execute("UPDATE journal SET body = ? WHERE seq = ?", (new, seq))
                    changed += 1
        return changed

    # --- checkpoints ---------------------------------------------------------------
    def write_states(
        self,
        states: list[tuple[str, bytes]],
        outbox: list[tuple[str, str, bytes, int]] | None = None,
    ) -> None:
        """One chunk of a checkpoint: serialized states (each knows its last seq), after
        ``outbox``: the actions produced up to their serialization, committed first."""
        if outbox:
            self.outbox_add(outbox)
        _write_states(self.sdb, [seal_states(self.sealer, states)], [], {})

    def checkpoint(
        self,
        states: list[tuple[str, bytes]],
        deleted: Iterable[str],
        seqs: dict[int, int],
        outbox: list[tuple[str, str, bytes, int]],
    ) -> None:
        """Finish a checkpoint: the actions produced so far (committed first, so none is
        lost), then the last states, erasures and each partition's replay start, the
        latter atomically."""
        self.outbox_add(outbox)
        _write_states(self.sdb, [seal_states(self.sealer, states)], deleted, seqs)

    def checkpoint_seqs(self) -> dict[int, int]:
        rows = self.sdb.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint_seq:%'")
        return {int(k.split(":")[1]): int(v) for k, v in rows}

    def load_states(self) -> Iterator[CustomerState]:
        for (body,) in self.sdb.execute("SELECT body FROM states"):
            yield load(self._open(body))

    # --- outbox --------------------------------------------------------------------
    def outbox_add(self, entries: list[tuple[str, str, bytes, int]]) -> None:
        """Queue (key, customer_id, action JSON, cause_at); a key already present is kept.
        One transaction (beyond 200 rows the insert takes several statements)."""
        if not entries:
            return
        with _transaction(self.db):
            _outbox_add(self.db, seal_outbox(self.sealer, entries))

    def outbox_mark(self, keys: list[str], status: str) -> None:
        """Set the status of ``keys``, in one transaction."""
        with _transaction(self.db):
            _set_status(self.db, keys, status)

    def outbox_sync(self, entries: list[tuple[str, str, bytes, int]], sent: list[str]) -> list[str]:
        """One transaction (one sync) for a flush of the outbox: queue ``entries`` (a key
        already present is kept), mark ``sent`` delivered; returns which of the entries'
        keys are still pending (the others were delivered before: a replay)."""
        with _transaction(self.db) as db:
            _outbox_add(db, seal_outbox(self.sealer, entries))
            _set_status(db, sent, "sent")
            return self.outbox_pending_keys([e[0] for e in entries])

    def outbox_pending_keys(self, keys: list[str]) -> list[str]:
        """Which of ``keys`` are not settled (sent or dead); callers pass keys they have
        stored. Looks rows up by primary key (a filter on ``status`` the planner could use
        would let it scan every pending row instead)."""
        settled: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            # only the rows not pending come back (rare: a replay), so one step, not one per
            # key (see _insert_rows); "+status" keeps the planner on the primary key
            rows = self.db.execute(
                f"SELECT key FROM outbox WHERE key IN ({_marks(len(chunk))})"
                " AND +status != 'pending'",
                chunk,
            )
            settled.update(str(k) for (k,) in rows)
        return [k for k in keys if k not in settled]

    def outbox_prune(self, before: int) -> int:
        """Forget delivered actions fired before ``before`` (replays after a crash start at
        the last checkpoint, so they never re-create actions that old)."""
        cur = self.db.execute(
            "DELETE FROM outbox WHERE status = 'sent' AND cause_at < ?", (before,)
        )
        return cur.rowcount

    def outbox_pending(self) -> list[OutboxEntry]:
        rows = self.db.execute(
            "SELECT key, body, cause_at FROM outbox WHERE status = 'pending' ORDER BY rowid"
        )
        return [(str(k), self._open(bytes(b)), int(c)) for k, b, c in rows]

    def outbox_count(self, status: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM outbox WHERE status = ?", (status,)).fetchone()
        return int(row[0])

    # --- customers -----------------------------------------------------------------
    def refresh_index(self) -> int:
        """Bring the journal's customer index up to date (engine/embedded/storage/
        journal_index.py): any thread, in the background; returns the rows read."""
        return self.journal_index.refresh()

    def index_step(self, budget: int) -> bool | None:
        """A slice of :meth:`refresh_index` for the event loop (``JournalIndex.step``)."""
        return self.journal_index.step(budget)

    def erase_from_journal(self, customer_id: str) -> int:
        """Replace a customer's journaled events with ``null`` (seq numbering stays);
        returns how many. Only the rows the journal index names are read (the index is
        refreshed first: rows appended since its last refresh are indexed now)."""
        index = self.journal_index
        index.refresh()
        db = self.jdb
        erased = 0
        with _transaction(db):
            for seq in index.candidates(customer_id):
                row = db.execute("SELECT body FROM journal WHERE seq = ?", (seq,)).fetchone()
                if row is None:  # trimmed meanwhile
                    continue
                raws = _raw_list.decode(self._open(bytes(row[0])))
                hit = False
                for i, raw in enumerate(raws):
                    # msgspec.Raw never equals bytes: compare its bytes (an earlier erasure)
                    if bytes(raw) != b"null" and _cid.decode(raw).customer_id == customer_id:
                        raws[i] = msgspec.Raw(b"null")
                        hit = True
                        erased += 1
                if hit:
                    body = b"[" + b",".join(bytes(r) for r in raws) + b"]"
                    db.execute("UPDATE journal SET body = ? WHERE seq = ?", (self._seal(body), seq))
                    index.rewritten(seq, body)
        return erased

    def erase_customer(self, customer_id: str) -> dict[str, int]:
        """Delete a customer's checkpointed state and every outbox row (pending, sent or
        dead: they hold the actions' params and address); campaign counts committed
        under its id and not yet folded move to a key without it (the next fold adds
        them to the totals: reports keep the numbers, not the id). Returns counts:
        ``states``, ``outbox`` (pending ones), ``outbox_rows`` (all)."""
        out = {}
        with _transaction(self.sdb):
            out["states"] = self.sdb.execute(
                "DELETE FROM states WHERE customer_id = ?", (customer_id,)
            ).rowcount
            self.sdb.execute(
                "UPDATE analytics_pending SET customer_id = ? WHERE customer_id = ?",
                ("\x00erased:" + uuid.uuid4().hex, customer_id),
            )
        with _transaction(self.db):
            out["outbox"] = self.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE customer_id = ? AND status = 'pending'",
                (customer_id,),
            ).fetchone()[0]
            out["outbox_rows"] = self.db.execute(
                "DELETE FROM outbox WHERE customer_id = ?", (customer_id,)
            ).rowcount
        return out

    def truncate_wals(self) -> dict[str, bool]:
        """Move every committed page into the database files and truncate their WALs, so
        no older page image (an erased customer's) stays in a ``-wal`` file; a database
        another connection is reading is retried at the next call. Returns, per file,
        whether its WAL is empty now."""
        out = {}
        for name, db in (("journal.db", self.jdb), ("state.db", self.db), ("states.db", self.sdb)):
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            out[name] = not busy
        return out

    # --- rules ---------------------------------------------------------------------
    def save_rules(
        self, created_at: int, files: dict[str, str], archive: dict[str, Any] | None = None
    ) -> int:
        """Store ``files`` as the next version, with the earlier rule versions it keeps
        (``RuleSet.archive``), in one transaction. Returns the version."""
        with _transaction(self.db):
            row = self.db.execute("SELECT COALESCE(MAX(version), 0) FROM rules").fetchone()
            version = int(row[0]) + 1
            self.db.execute(
                "INSERT INTO rules (version, created_at, files) VALUES (?, ?, ?)",
                (version, created_at, orjson.dumps(files)),
            )
            if archive:
                self.db.execute(
                    "INSERT INTO rules_archive (version, archive) VALUES (?, ?)",
                    (version, orjson.dumps(archive)),
                )
        return version

    def rules_archive(self, version: int) -> dict[str, Any]:
        """The earlier rule versions stored with deployed version ``version`` ({} if
        none)."""
        row = self.db.execute(
            "SELECT archive FROM rules_archive WHERE version = ?", (version,)
        ).fetchone()
        return {} if row is None else dict(orjson.loads(row[0]))

    def rules_files(self, version: int) -> dict[str, str] | None:
        """The files of deployed version ``version`` (None: no such version)."""
        row = self.db.execute("SELECT files FROM rules WHERE version = ?", (version,)).fetchone()
        if row is None:
            return None
        files: dict[str, Any] = orjson.loads(row[0])
        return {str(k): str(v) for k, v in files.items()}

    def latest_rules(self) -> tuple[int, dict[str, str]] | None:
        row = self.db.execute(
            "SELECT version, files FROM rules ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        files: dict[str, Any] = orjson.loads(row[1])
        return int(row[0]), {str(k): str(v) for k, v in files.items()}

    def rule_versions(self) -> list[tuple[int, int]]:
        rows = self.db.execute("SELECT version, created_at FROM rules ORDER BY version")
        return [(int(v), int(c)) for v, c in rows]

    # --- analytics -----------------------------------------------------------------
    def analytics_periods(
        self, hourly: bool, first: int, last: int, rule_id: str | None = None
    ) -> list[Period]:
        """Committed campaign counts of days (or hours) ``first``..``last``
        (engine/embedded/storage/analytics.py)."""
        return list(read_periods(self.sdb, hourly, first, last, rule_id))

    def analytics_day_totals(self, first: int, last: int) -> list[DayTotals]:
        """Every rule's committed report figures of days ``first``..``last``
        (engine/embedded/storage/analytics.py ``analytics_day_totals``)."""
        return read_day_totals(self.sdb, first, last)

    def analytics_read(self, read: Callable[..., _T], *args: Any) -> tuple[_T, int]:
        """``read(*args)`` (this store's ``analytics_periods`` or ``analytics_day_totals``)
        and the number of folds committed, in one read transaction: whether the totals
        read include a checkpoint the engine has not yet seen finish
        (engine/embedded/checkpoints.py)."""
        self.sdb.execute("BEGIN")
        try:
            return read(*args), folds(self.sdb)
        finally:
            self.sdb.execute("COMMIT")

    def analytics_fold(self) -> int:
        """After an inline checkpoint committed: its customers' pending counts join the
        totals (engine/embedded/storage/analytics.py); how many customers' rows were
        folded. A paced checkpoint's writer folds them in its last transaction."""
        with _transaction(self.sdb):
            return fold(self.sdb)

    def analytics_folds(self) -> int:
        """How many folds of pending counts ``states.db`` has committed."""
        return folds(self.sdb)

    def analytics_prune(self, now: int, retention_days: float) -> None:
        """Forget days older than ``retention_days`` and hours older than 8 days."""
        prune(self.sdb, now, retention_days)

    # --- models --------------------------------------------------------------------
    # Fitted model parameters (engine/embedded/models.py), versioned, in ``states.db``'s
    # meta table beside the checkpoint positions: key ``model:<kind>:<version>`` (ten
    # digits, so keys sort as versions), value the parameters' JSON.
    def save_model(self, kind: str, version: int, body: str) -> None:
        """Store version ``version`` of model ``kind`` (JSON text). A version already
        stored raises ``sqlite3.IntegrityError`` (versions are never overwritten)."""
        self.sdb.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)", (_model_key(kind, version), body)
        )

    def latest_model(self, kind: str) -> tuple[int, str] | None:
        """The highest stored version of model ``kind`` and its JSON; None if none."""
        row = self.sdb.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1",
            _model_range(kind),
        ).fetchone()
        return None if row is None else (int(row[0].rsplit(":", 1)[1]), str(row[1]))

    def model_versions(self, kind: str) -> list[tuple[int, str]]:
        """Every stored version of model ``kind`` with its JSON, oldest first."""
        rows = self.sdb.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY key",
            _model_range(kind),
        )
        return [(int(k.rsplit(":", 1)[1]), str(v)) for k, v in rows]


def _model_key(kind: str, version: int) -> str:
    if ":" in kind or not 0 < version < 10**10:
        raise ValueError(f"bad model kind or version: {kind!r} {version}")
    return f"model:{kind}:{version:010d}"


def _model_range(kind: str) -> tuple[str, str]:
    return f"model:{kind}:", f"model:{kind};"  # ';' sorts right after ':'
