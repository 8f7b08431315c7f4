"""Campaign counts folded by the paced checkpoint's writer process (in its last
transaction, engine/embedded/storage/analytics.py), seen from the engine: a report while
the writer has committed but the engine has not yet seen it exit counts nothing twice,
and a writer that fails after its fold committed leaves the counts folded, not pending
again (written by the next round, they would count twice)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.engine.embedded.conftest import running
from tests.engine.embedded.test_reports import check_reports, scenario

# the real writer, then a marker file (argv: DATA_DIR SYNCHRONOUS SPOOL PARENT_PID), then
# what the test needs: sleep (the engine has not seen it exit) or fail
_AFTER = """
import sys, time
from pathlib import Path
from engine.embedded.spool import main
assert main(sys.argv[1:]) == 0
Path(sys.argv[1], "writer-done").touch()
{then}
"""


def _writer(then: str) -> list[str]:
    return [sys.executable, "-c", _AFTER.format(then=then)]


def _pending(data: Path) -> int:
    with sqlite3.connect(data / "states.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM analytics_pending").fetchone()[0])


async def test_report_while_the_writer_has_committed_but_not_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    async with running(data, checkpoint_interval=3600) as h:
        await scenario(h)
        monkeypatch.setattr("engine.embedded.paced.WRITER", _writer("time.sleep(1.5)"))
        task = asyncio.create_task(h.runtime.paced_checkpoint())
        while not (data / "writer-done").exists():
            await asyncio.sleep(0.01)
        assert _pending(data) == 0  # folded: the totals hold the round's counts
        assert not task.done()  # and the engine still holds them in memory
        await check_reports(h)
        assert await task
        await check_reports(h)


async def test_a_writer_failing_after_its_fold_leaves_the_counts_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    async with running(data, checkpoint_interval=3600) as h:
        await scenario(h)
        monkeypatch.setattr("engine.embedded.paced.WRITER", _writer("raise SystemExit(3)"))
        assert not await h.runtime.paced_checkpoint()  # failed, as far as the engine knows
        assert _pending(data) == 0
        await check_reports(h)
        monkeypatch.undo()
        assert await h.runtime.paced_checkpoint()  # its customers again, with no counts
        await check_reports(h)
    async with running(data, checkpoint_interval=3600) as h:  # restarted: the same
        await check_reports(h)
