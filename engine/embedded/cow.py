"""After a fork: take back write access to the heap in one system call, not one page fault
per page.

A fork write-protects every page of the parent; its first write to each one afterwards
traps, even once the child has gone (it then only re-enables writing: 0.9 us per fault
here, load_tests/bench_fork_faults.py; ~30,000 of them follow each checkpoint, on the
event loop). ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+) does the same for a whole
range inside the kernel: run from a thread after the child has exec'd, it costs the
event loop nothing (ctypes releases the GIL) and ~30 ms of another core per 400k objects.

Only private anonymous mappings that are mostly resident are covered: populating also
allocates pages never touched, which for a thread stack (8 MB reserved, a few KB used)
would be memory for nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["populate_heap"]

_MADV_POPULATE_WRITE = 23
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise if sys.platform == "linux" else None
except (OSError, AttributeError):
    _madvise = None
if _madvise is not None:
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _mappings(min_resident: float) -> list[tuple[int, int]]:
    """Private writable anonymous mappings (and the brk heap) at least ``min_resident``
    resident, from /proc/self/smaps."""
    out: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):
                fields = rest.split()
                anon = len(fields) < 5 or fields[4] == "[heap]"
                if fields[0] == "rw-p" and anon:
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    current = (lo, hi)
                else:
                    current = None
            elif current is not None and head == "Rss:":
                lo, hi = current
                if int(rest.split()[0]) * 1024 >= min_resident * (hi - lo):
                    out.append(current)
                current = None
    return out


def populate_heap(min_resident: float = 0.5) -> int:
    """Make the heap's write-protected pages writable again; returns the bytes covered
    (0 where the call is not supported)."""
    if _madvise is None:
        return 0
    done = 0
    for lo, hi in _mappings(min_resident):
        if _madvise(lo, hi - lo, _MADV_POPULATE_WRITE) == 0:
            done += hi - lo
        elif ctypes.get_errno() == 22:  # EINVAL: a kernel before 5.14
            return done
    return done
