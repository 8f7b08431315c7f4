"""Whether a failed write is a storage fault, and which: shared by the runtimes and the API.

A write that fails with a full disk (``ENOSPC``, ``EDQUOT``, SQLite's ``SQLITE_FULL``) is
``disk_full`` (HTTP 507); one that fails with an I/O error (any other ``OSError``, SQLite's
``SQLITE_IOERR``, ``SQLITE_READONLY``, ``SQLITE_CANTOPEN``, ``SQLITE_PROTOCOL``) is ``io``
(HTTP 503); both as ``StorageUnavailable.cause`` (engine/exceptions.py). The embedded
runtime records the faults per store and names them in ``/readyz``
(engine/embedded/health.py); the HTTP errors middleware (engine/http/base.py) answers a
request whose write failed so with 507 or 503 rather than 500.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = ["DISK_FULL", "IO", "storage_cause"]

DISK_FULL = "disk_full"
IO = "io"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_IO = {
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}


def storage_cause(err: BaseException) -> str | None:
    """``disk_full``, ``io`` or None (not a storage error) for an exception of a write."""
    if isinstance(err, OSError):
        return DISK_FULL if err.errno in _FULL_ERRNOS else IO
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        if code is not None:
            primary = code & 0xFF
            if primary == sqlite3.SQLITE_FULL:
                return DISK_FULL
            if primary in _SQLITE_IO:
                return IO
        text = str(err)
        if "database or disk is full" in text:
            return DISK_FULL
        if "disk I/O error" in text or "readonly database" in text:
            return IO
    return None
