"""The start-up errors ``nudge run`` reports in one line (the errors the HTTP layer turns
into status codes are in engine/exceptions.py)."""

from __future__ import annotations

from pathlib import Path

from engine.exceptions import NudgeError

__all__ = ["DataDirError", "DataDirLocked", "ListenError", "StartupError"]


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
