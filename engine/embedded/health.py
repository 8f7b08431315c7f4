"""What makes the embedded runtime unready besides starting and stopping: storage faults.

A write to the data directory that fails with a full disk (``ENOSPC``, ``EDQUOT``,
SQLite's ``SQLITE_FULL``) or an I/O error (``EIO``, ``EROFS``, SQLite's ``SQLITE_IOERR``,
``SQLITE_READONLY``, ``SQLITE_CANTOPEN``; told apart by engine/storage_faults.py
``storage_cause``) is recorded here by store (``journal``, ``outbox``, ``deadletter``,
``checkpoint``), counted in
``nudge_storage_errors_total{store, cause}``, and named by ``/readyz`` until a write of
that store succeeds again, or the runtime's storage probe (a small file written and
synced in the data directory, every second while a fault is recorded) succeeds. Nothing
here retries a write: each store's owner does (the journal's clients, the outbox's flush
loop, the delivery tasks, the next checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.storage_faults import DISK_FULL, IO, storage_cause

if TYPE_CHECKING:  # only the type: no prometheus import here
    from engine.metrics import Metrics

__all__ = ["STORES", "Health", "probe_write"]

logger = logging.getLogger(__name__)

STORES = ("journal", "outbox", "deadletter", "checkpoint", "data")
_PROBE = ".nudge-probe"
_PROBE_BYTES = 256 * 1024


def probe_write(data_dir: Path) -> None:
    """Write and sync a small file in ``data_dir``, then delete it (raises OSError)."""
    path = data_dir / _PROBE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"\0" * _PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Health:
    """The storage faults recorded now, by store (module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.faults: dict[str, tuple[str, str]] = {}  # store -> (cause, detail)
        for store in STORES:  # exported at 0 from the start
            for cause in (DISK_FULL, IO):
                metrics.storage_errors.labels(store, cause)

    def failed(self, store: str, err: BaseException) -> str | None:
        """Record a failed write of ``store``; its cause (None: not a storage error,
        nothing recorded)."""
        cause = storage_cause(err)
        if cause is None:
            return None
        self._metrics.storage_errors.labels(store, cause).inc()
        detail = str(err)[:200] or type(err).__name__
        if store not in self.faults:
            logger.error(
                "%s: write failed (%s): %s; retried until it succeeds",
                store,
                cause,
                detail,
                extra={"store": store, "cause": cause},
            )
        self.faults[store] = (cause, detail)
        return cause

    def ok(self, store: str) -> None:
        """A write of ``store`` succeeded: its fault, if any, is over."""
        if self.faults.pop(store, None) is not None:
            logger.info("%s: writes succeed again", store, extra={"store": store})

    def clear(self) -> None:
        """The storage probe succeeded: every fault is presumed over (the next failure
        records it again)."""
        for store in list(self.faults):
            self.ok(store)

    @property
    def disk_full(self) -> bool:
        return any(cause == DISK_FULL for cause, _ in self.faults.values())

    def reasons(self) -> list[str]:
        """``"<store>: disk full (<detail>)"`` for each fault recorded now."""
        return [
            f"{store}: {'disk full' if cause == DISK_FULL else 'I/O error'} ({detail})"
            for store, (cause, detail) in sorted(self.faults.items())
        ]
