"""A sink that appends each action as one JSON line to a file, and its reader."""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from connectors.exceptions import ConnectorError, SinkError
from connectors.sinks.base import action_payload
from connectors.sinks.jsonl_index import CHUNK, LineIndex
from engine.types import Action, Millis

__all__ = ["JsonlSink", "read_jsonl_actions"]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class JsonlSink:
    """Appends ``action_payload(action)`` as one JSON line (``\\n``-terminated) to ``path``.

    Durability: every line is written to the OS before ``send`` returns, so a process crash
    loses no accepted action. ``fsync_every`` sets how often the file is also fsynced: after
    every N lines (1, the default: ``send`` returns only once its line is on disk), or only
    at :meth:`close` (0). With N > 1 a power loss may drop up to N - 1 accepted lines.

    Concurrent sends are written in batches by one writer (group commit: one fsync covers
    every line queued meanwhile). The file is only ever appended to, except that
    :meth:`start` truncates an unterminated last line left by a crash (that line's ``send``
    never returned, so the action will be sent again), and :meth:`redact` overwrites an
    erased customer's lines in place with ``{}`` and spaces (still a JSON Lines file:
    every line a JSON value; :func:`read_jsonl_actions` skips them). A record is a line
    ending in ``\\n``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync_every: int = 1, name: str = "jsonl"
    ) -> None:
        if fsync_every < 0:
            raise ConnectorError("must be >= 0", field="fsync_every")
        self.name = name
        self.path = Path(path)
        self.fsync_every = fsync_every
        self._file: IO[bytes] | None = None
        self._unsynced = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        # where each customer's lines are, for redact (connectors/sinks/jsonl_index.py);
        # None: unknown (a write failed), rebuilt at the next open
        self._index: LineIndex | None = None

    async def start(self) -> None:
        """Open ``path`` for appending (creating parent directories), dropping a partial
        last line. Idempotent."""
        if self._file is not None:
            return
        async with self._opening:
            if self._file is None:
                try:
                    self._file = await asyncio.to_thread(self._open)
                except OSError as err:
                    raise SinkError(f"cannot open {self.path}: {err}", retryable=True) from err

    async def send(self, action: Action) -> None:
        """Append ``action``; returns once its line is written (and fsynced, per cadence)."""
        try:
            line = orjson.dumps(action_payload(action), option=orjson.OPT_NON_STR_KEYS) + b"\n"
        except TypeError as err:
            raise SinkError(f"action cannot be encoded as JSON: {err}", retryable=False) from err
        await self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((line, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name=f"jsonl-{self.name}")
        await done

    async def redact(self, customer_id: str) -> int:
        """Redact the lines of ``customer_id``'s actions (erasure): each is overwritten in
        place with ``{}`` and spaces (its length and every other line's offset stay), after the
        writes queued now; sends meanwhile wait for the reopened file. A line is one
        ``pwrite``, so a crash leaves each line whole or redacted; the file is fsynced
        before this returns. Only the parts of the file the sink's line index names are
        read (connectors/sinks/jsonl_index.py), the whole file when it has none.
        Returns how many lines were redacted."""
        async with self._opening:
            if self._writer is not None:
                await self._writer
            file, self._file = self._file, None
            if file is not None:
                await asyncio.to_thread(_sync_close, file)
            index = self._index
            dropped = await asyncio.to_thread(_redact_lines_of, self.path, customer_id, index)
        await self.start()
        return dropped

    async def close(self) -> None:
        """Finish queued writes, fsync and close. Idempotent."""
        if self._writer is not None:
            await self._writer
            self._writer = None
        file, self._file = self._file, None
        if file is not None:
            await asyncio.to_thread(_sync_close, file)

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # owner-only whatever the umask: the lines hold customers' ids and params
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        file = os.fdopen(fd, "a+b")  # held open until close()
        try:
            _drop_partial_tail(file, self.path)
            size = file.seek(0, os.SEEK_END)
            if self._index is None or self._index.size != size:  # new, or changed since
                self._index = LineIndex.of_file(file, size)
        except BaseException:
            file.close()
            raise
        return file

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            error: SinkError | None = None
            try:
                await asyncio.to_thread(self._write, b"".join(line for line, _ in batch))
            except Exception as err:  # resolve every waiter, whatever went wrong
                error = SinkError(f"cannot write {self.path}: {err}", retryable=True)
            for _, done in batch:
                if done.done():  # the sender was cancelled
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    def _write(self, data: bytes) -> None:
        file = self._file
        if file is None:
            raise OSError("sink is closed")
        try:
            file.write(data)
            file.flush()
        except BaseException:
            self._index = None  # how much was written is unknown: rebuilt at the next open
            raise
        if self._index is not None:
            self._index.add(data)
        self._unsynced += data.count(b"\n")
        if self.fsync_every and self._unsynced >= self.fsync_every:
            os.fsync(file.fileno())
            self._unsynced = 0


_REDACTED = b"{}"


def _redact_lines_of(path: Path, customer_id: str, index: LineIndex | None = None) -> int:
    """Overwrite with ``{}`` and spaces every complete line whose ``customer_id`` is
    ``customer_id`` (found by its JSON string, then the exact field), reading only the
    chunks ``index`` names when it describes the file as it is; returns how many."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    needle = orjson.dumps(customer_id)
    redacted = 0
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            size = len(mm)
            if index is None or index.size != size:
                ranges = [(0, size)]
            else:  # the lines that start in each chunk named, to the end of the last
                ranges = []
                for i in index.chunks(customer_id):
                    lo = 0 if i == 0 else mm.find(b"\n", i * CHUNK - 1) + 1
                    hi = min(size, (i + 1) * CHUNK)
                    end = mm.find(b"\n", hi - 1) if hi < size else size
                    ranges.append((lo, size if end < 0 else end + 1))
            for lo, hi in ranges:
                pos = mm.find(needle, lo, hi)
                while pos >= 0:
                    start = mm.rfind(b"\n", 0, pos) + 1
                    end = mm.find(b"\n", pos)
                    if end < 0:  # an unterminated tail: not a record (start() truncates it)
                        break
                    try:
                        hit = orjson.loads(mm[start:end]).get("customer_id") == customer_id
                    except (orjson.JSONDecodeError, AttributeError):
                        hit = False
                    if hit:
                        os.pwrite(fd, _REDACTED.ljust(end - start), start)
                        redacted += 1
                    pos = mm.find(needle, end, hi)
        if redacted:
            os.fsync(fd)
    finally:
        os.close(fd)
    return redacted


def _drop_partial_tail(file: IO[bytes], path: Path) -> None:
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        return
    pos = size
    while pos > 0:
        step = min(pos, 65536)
        file.seek(pos - step)
        chunk = file.read(step)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            pos = pos - step + nl + 1
            break
        pos -= step
    if pos != size:
        logger.warning("dropping %d bytes of a partial last line in %s", size - pos, path)
        file.truncate(pos)
        file.flush()
        os.fsync(file.fileno())
    file.seek(0, os.SEEK_END)


def _sync_close(file: IO[bytes]) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def read_jsonl_actions(path: str | os.PathLike[str]) -> list[Action]:
    """Every action in a file written by :class:`JsonlSink`, in file order.

    An unterminated last line (a crash mid-write, or a writer still appending) is ignored,
    and so are blank lines and redacted ones (``{}``: an erased customer's).
    Any other line that is not a valid action raises :class:`ConnectorError` with
    ``field`` ``"<path>:<line number>"``. A missing file raises ``FileNotFoundError``.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # after the last "\n": empty, or a partial line
    actions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.rstrip() == _REDACTED:
            continue
        try:
            actions.append(_action_from_json(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ConnectorError(f"not an action: {err}", field=f"{path}:{number}") from err
    return actions


def _action_from_json(obj: Any) -> Action:
    if not isinstance(obj, dict):
        raise TypeError(f"expected an object, got {type(obj).__name__}")
    return Action(
        rule_id=str(obj["rule_id"]),
        rule_version=int(obj["rule_version"]),
        customer_id=str(obj["customer_id"]),
        channel=str(obj["channel"]),
        template=str(obj["template"]),
        params=dict(obj["params"]),
        variant=str(obj["variant"]),
        idempotency_key=str(obj["idempotency_key"]),
        fire_at=_parse_iso_ms(str(obj["fire_at"])),
    )


def _parse_iso_ms(text: str) -> Millis:
    """RFC 3339 (as written by ``engine.types.iso``) to epoch ms, exactly (no float)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"fire_at without a time zone: {text!r}")
    return (when - _EPOCH) // _MS
