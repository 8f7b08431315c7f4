"""The data directory: its lock (one engine per data directory) and its modes.

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

__all__ = ["LOCK_FILE", "DataDirLock", "os_reason", "secure_data_dir"]

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


def secure_data_dir(data_dir: Path) -> None:
    """Owner-only access, best effort: the directory 0700, the files in it 0600 (a data
    directory from before this was done included), each only if this process owns it
    (a volume's root owned by root with a group, as Kubernetes' fsGroup makes it, is
    left alone). New files: ``nudge run`` sets umask 077; the stores' SQLite files are
    created here first (0600), and SQLite gives their -wal and -shm files the same mode."""
    me = os.geteuid()
    _tighten(data_dir, 0o700, me)
    for name in _DB_FILES:
        fd = os.open(data_dir / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
    for path in data_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            _tighten(path, 0o600, me)


def _tighten(path: Path, mode: int, owner: int) -> None:
    with contextlib.suppress(OSError):
        st = path.stat()
        if st.st_uid == owner and st.st_mode & 0o777 & ~mode:
            path.chmod(mode)


_DB_FILES = (
    "journal.db",
    "state.db",
    "states.db",
    "deadletter.db",
    "addresses.db",
    "suppressed.db",
)


def os_reason(err: BaseException) -> str:
    """A start-up error's cause in a few words, with the path if it names one."""
    if isinstance(err, OSError):
        what = err.strerror or type(err).__name__
        return f"{what} ({err.filename})" if err.filename else what
    return str(err) or type(err).__name__
