"""`nudge run` options that reach the runtime's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.embedded.server import ServeOptions


@pytest.mark.parametrize("value", ["0", "-5", "abc", "inf", "nan"])
def test_checkpoint_interval_must_be_positive(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--checkpoint-interval", value])
    assert exc.value.code == 2
    assert "--checkpoint-interval: expected a positive number of seconds" in capsys.readouterr().err


def _opts(interval: float | None) -> ServeOptions:
    return ServeOptions(
        rules=None,
        data=Path("d"),
        host="127.0.0.1",
        port=0,
        clock_speed=1.0,
        sinks=None,
        partitions=1,
        demo=False,
        synchronous="FULL",
        checkpoint_interval=interval,
    )


def test_checkpoint_interval_flag_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NUDGE_CHECKPOINT_INTERVAL", raising=False)
    assert _opts(None).checkpoint_interval == 10.0
    monkeypatch.setenv("NUDGE_CHECKPOINT_INTERVAL", "0.25")
    assert _opts(None).checkpoint_interval == 0.25
    assert _opts(30.0).checkpoint_interval == 30.0


def test_checkpoint_mode_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NUDGE_CHECKPOINT_MODE", raising=False)
    assert _opts(None).checkpoint_mode == "paced"
    monkeypatch.setenv("NUDGE_CHECKPOINT_MODE", "inline")
    assert _opts(None).checkpoint_mode == "inline"
    monkeypatch.setenv("NUDGE_CHECKPOINT_MODE", "fork")  # removed: not silently inline
    with pytest.raises(SystemExit, match="NUDGE_CHECKPOINT_MODE: 'fork' is not one of paced"):
        _opts(None)


def test_admission_options_reach_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServeOptions] = []
    monkeypatch.setattr("engine.embedded.server.serve", lambda opts: seen.append(opts) or 0)
    assert main(["run", "--admission-target", "0.5", "--priority", "wishlist_added=high",
                 "--priority", "page_viewed=normal"]) == 0  # fmt: skip
    (opts,) = seen
    assert opts.admission_target == 0.5
    assert opts.priorities == {"wishlist_added": "high", "page_viewed": "normal"}


def test_a_bad_priority_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--priority", "wishlist_added=urgent"])
    assert exc.value.code == 2
    assert "expected TYPE=low|normal|high" in capsys.readouterr().err
