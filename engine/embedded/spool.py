"""A checkpoint's hand-over file, and the writer process that commits it.

A paced checkpoint (engine/embedded/paced.py) packs the changed states into a spool file
in the data directory, a slice at a time, and spawns this module, which loads the spool
into SQLite (``engine.embedded.storage.sqlite.write_snapshot``) and deletes it: the SQLite work
(~0.5 s of CPU and two fsyncs per 100,000 states) never runs in the engine's process.

Format: MessagePack frames, each a 4-byte big-endian length and a body. Every frame but
the last is a list of ``[customer_id, state bytes]`` rows (campaign counts among them as
note ids: ``state.analytics.IdRows`` makes them pending-count rows as they are read); the
last, the trailer, is ``[seqs, deleted, outbox rows, erased after]`` (erasures to apply
before the states, and after them), written once every state is in (a round only knows
its actions at the end).
A spool without its trailer is incomplete and refused. A spool is never read by the
engine itself: if the writer fails, the checkpoint did not happen (the journal still
holds its events) and the next checkpoint writes a new spool.

    python -m engine.embedded.spool DATA_DIR SYNCHRONOUS SPOOL [PARENT_PID]

``NUDGE_CHECKPOINT_STEP`` (default 2,000) is how many states it commits per transaction
(``engine.embedded.storage.sqlite.STATES_PER_COMMIT``), ``NUDGE_CHECKPOINT_STEP_PAUSE_MS`` (default
0) how long it waits between them: more spreads its disk writes over a longer commit. The crash
test sets both, so that its kill lands between a writer's steps.

Exit codes: 0 committed, ``EXIT_DISK_FULL`` (28) the disk was full, ``EXIT_IO`` (5) an
I/O error (the engine records either for ``/readyz``); anything else is a failure the
writer logged with its traceback. In every case but 0 nothing of the spool was
committed as a checkpoint (the positions are written last), and the engine packs its
states again into the next one.

With PARENT_PID the writer dies with that process (``PR_SET_PDEATHSIG``) and runs at nice
19: a writer outliving a killed engine could commit an older checkpoint over the newer
ones of the engine restarted in its place.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sqlite3
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgspec

from engine.embedded.storage.crypt import Sealer, seal_outbox, seal_states
from engine.embedded.storage.sqlite import write_snapshot
from engine.logs import configure_logging
from engine.storage_faults import DISK_FULL, storage_cause
from state.analytics import IdRows

__all__ = [
    "EXIT_DISK_FULL",
    "EXIT_IO",
    "WRITER",
    "SpoolWriter",
    "die_with_parent",
    "main",
    "read_spool",
    "writer_env",
]

# the writer program, given DATA_DIR SYNCHRONOUS SPOOL [PARENT_PID] (tests swap it)
WRITER = [sys.executable, "-m", "engine.embedded.spool"]
_PR_SET_PDEATHSIG = 1
_NICE = 19
try:  # resolved once, at import
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None

EXIT_DISK_FULL = 28  # ENOSPC
EXIT_IO = 5  # EIO
_LEN = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_trailer = msgspec.msgpack.Decoder(
    tuple[dict[int, int], list[str], list[tuple[str, str, bytes, int]], list[str]]
)
_rows = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def _frame(fh: IO[bytes], obj: Any) -> None:
    body = _enc.encode(obj)
    fh.write(_LEN.pack(len(body)))
    fh.write(body)


class SpoolWriter:
    """Write a spool incrementally: ``rows`` as often as needed, then ``trailer`` once.
    Not synced: it only has to outlive this process until the writer has read it. With
    ``sealer`` (encryption at rest) the states and actions are sealed here, in the spool
    already: the writer stores them as they are and never needs the key."""

    def __init__(self, path: Path, sealer: Sealer | None = None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self._sealer = sealer

    def rows(self, rows: list[tuple[str, bytes]]) -> None:
        if rows:
            _frame(self._fh, seal_states(self._sealer, rows))

    def trailer(
        self,
        seqs: dict[int, int],
        deleted: list[str],
        outbox: list[tuple[str, str, bytes, int]],
        erased_after: list[str] | None = None,
    ) -> None:
        outbox = seal_outbox(self._sealer, outbox)
        _frame(self._fh, (seqs, deleted, outbox, erased_after or []))

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._fh.close()


def _offsets(fh: IO[bytes]) -> list[tuple[int, int]]:
    """Each frame's body offset and length (seeking over the bodies)."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    out: list[tuple[int, int]] = []
    at = 0
    while at < size:
        head = fh.read(_LEN.size)
        if len(head) < _LEN.size:
            raise ValueError("truncated spool frame header")
        (n,) = _LEN.unpack(head)
        at += _LEN.size
        if at + n > size:
            raise ValueError("truncated spool frame")
        out.append((at, n))
        at = fh.seek(at + n)
    return out


def _body(fh: IO[bytes], at: int, n: int) -> bytes:
    fh.seek(at)
    return fh.read(n)


def read_spool(
    fh: IO[bytes],
) -> tuple[
    dict[int, int],
    list[str],
    list[tuple[str, str, bytes, int]],
    list[str],
    Iterator[list[tuple[str, bytes]]],
]:
    """The trailer's parts and an iterator over the state chunks of an open spool (counts
    under note ids resolved)."""
    frames = _offsets(fh)
    if not frames:
        raise ValueError("empty spool")
    *rows, last = frames
    try:
        seqs, deleted, outbox, after = _trailer.decode(_body(fh, *last))
    except msgspec.ValidationError as e:  # ends with a rows frame: cut off before the end
        raise ValueError(f"incomplete spool (no trailer): {e}") from e
    ids = IdRows()
    return seqs, deleted, outbox, after, (ids.resolve(_rows.decode(_body(fh, *f))) for f in rows)


_SETTINGS = "NUDGE_WRITER_SETTINGS"  # the engine's settings the writer needs, as JSON


def writer_env() -> dict[str, str]:
    """The environment for the writer: this one, with this interpreter's import path, so
    it imports the same ``engine`` and ``state`` however the engine was started, and the
    settings it needs as read here (``_writer_settings``)."""
    from engine.settings import environment  # loaded already in an engine

    env = environment()
    path = os.pathsep.join(p for p in sys.path if p)
    given = [env.log_level, env.checkpoint_step, env.checkpoint_step_pause_ms]
    return {**os.environ, "PYTHONPATH": path, _SETTINGS: msgspec.json.encode(given).decode()}


def _writer_settings() -> tuple[str, int, float]:
    """The log level, states per commit and pause between commits (seconds): handed over
    by the engine (``writer_env``). Reading them here with engine.settings would import
    pydantic-settings, ~0.2 s of CPU at every checkpoint round (the writer is a fresh
    process each time, started beside a busy engine); a writer started otherwise reads
    them itself."""
    given = os.environ.get(_SETTINGS)
    if given is None:
        from engine.settings import environment

        env = environment()
        return env.log_level, env.checkpoint_step, env.checkpoint_step_pause_ms / 1000
    level, step, pause_ms = msgspec.json.decode(given, type=tuple[str, int, float])
    return level, step, pause_ms / 1000


def die_with_parent(parent: int) -> bool:
    """Make this process (a checkpoint writer) die with ``parent`` and run as
    background work (nice 19: the event loop's process, and the clients on the same cores,
    come first; the checkpoint just takes longer). False if ``parent`` is already gone."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return False
    os.nice(_NICE)
    return True


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    data_dir, synchronous, spool = args[:3]
    level, step, pause = _writer_settings()
    configure_logging(level)
    if len(args) > 3 and not die_with_parent(int(args[3])):
        return 1
    path = Path(spool)
    try:
        with path.open("rb") as fh:
            seqs, deleted, outbox, after, chunks = read_spool(fh)
            write_snapshot(data_dir, synchronous, outbox, deleted, chunks, seqs, after, step, pause)
    except (OSError, sqlite3.Error) as err:
        cause = storage_cause(err)
        if cause is None:
            raise
        logging.getLogger(__name__).error("checkpoint writer: %s: %s", cause, err)
        path.unlink(missing_ok=True)
        return EXIT_DISK_FULL if cause == DISK_FULL else EXIT_IO
    path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
