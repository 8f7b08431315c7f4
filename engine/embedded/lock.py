"""The data directory's lock: one engine per data directory.

``nudge.lock`` in the data directory is locked (``flock``, exclusive) by the runtime for
its whole life and holds its pid. A second engine started on the same directory finds it
locked and refuses to start (:class:`~engine.embedded.exceptions.DataDirLocked`, naming
the holder's pid) before it touches anything there: it would otherwise delete the first
one's checkpoint spools, append to the same journal and serve stale reads. The kernel
drops the lock when the holder exits, however it exits (``kill -9`` included), so a
stale lock file never blocks a restart. The descriptor is close-on-exec: the checkpoint
writers and refit processes the engine spawns do not hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from engine.embedded.exceptions import DataDirLocked

__all__ = ["LOCK_FILE", "DataDirLock"]

LOCK_FILE = "nudge.lock"


class DataDirLock:
    """An exclusive lock on ``data_dir`` (module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirLocked (OSError if the file cannot be opened)."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir, self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race a new holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
