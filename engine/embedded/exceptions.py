"""Runtime errors the HTTP layer turns into status codes, and the start-up errors
``nudge run`` reports in one line."""

from __future__ import annotations

from pathlib import Path

from engine.exceptions import NudgeError

__all__ = [
    "Backpressure",
    "DataDirError",
    "DataDirLocked",
    "ListenError",
    "NotReady",
    "StartupError",
    "StorageUnavailable",
]


class Backpressure(NudgeError):
    """The pipeline is full: retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, retry_after: float, queued: int) -> None:
        super().__init__(f"pipeline full ({queued} events queued); retry in {retry_after:g}s")
        self.retry_after = retry_after
        self.queued = queued


class NotReady(NudgeError):
    """Still recovering or shutting down (HTTP 503)."""


class StorageUnavailable(NudgeError):
    """A write to the data directory failed: ``cause`` is ``disk_full`` (ENOSPC, SQLite's
    "database or disk is full": HTTP 507) or ``io`` (any other I/O error: HTTP 503).
    Nothing of the request was acknowledged; retry after ``retry_after`` seconds."""

    def __init__(self, store: str, cause: str, detail: str, retry_after: float = 5.0) -> None:
        what = "disk full" if cause == "disk_full" else "I/O error"
        super().__init__(f"{store}: {what} ({detail}); retry in {retry_after:g}s")
        self.store = store
        self.cause = cause
        self.detail = detail
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return 507 if self.cause == "disk_full" else 503


class StartupError(NudgeError):
    """``nudge run`` cannot start; the message is the one line it prints."""


class DataDirLocked(StartupError):
    """Another engine holds the data directory's lock file."""

    def __init__(self, data_dir: Path, lock: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not recorded"
        super().__init__(
            f"data directory {data_dir} is in use by another engine ({holder}; lock file {lock})"
        )
        self.data_dir = data_dir
        self.pid = pid


class DataDirError(StartupError):
    """The data directory cannot be created, written or opened."""

    def __init__(self, data_dir: Path, detail: str) -> None:
        super().__init__(f"cannot use data directory {data_dir}: {detail}")
        self.data_dir = data_dir
        self.detail = detail


class ListenError(StartupError):
    """The HTTP port cannot be bound (in use, not permitted)."""

    def __init__(self, host: str, port: int, detail: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {detail}")
        self.host = host
        self.port = port
