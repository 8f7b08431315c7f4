"""The engine's NUDGE_ settings (engine/settings.py): read when used, a bad one named."""

from __future__ import annotations

import pytest

from engine.cli import main
from engine.settings import SettingsError, environment


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUDGE_CHECKPOINT_INTERVAL", raising=False)
    assert environment().checkpoint_interval == 10.0
    monkeypatch.setenv("NUDGE_CHECKPOINT_INTERVAL", "0.25")
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", "na_x")
    env = environment()
    assert env.checkpoint_interval == 0.25
    assert env.admin_token == "na_x"


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUDGE_CHECKPOINT_STEP", "many")
    with pytest.raises(SettingsError, match=r"NUDGE_CHECKPOINT_STEP: .*'many'"):
        environment()


def test_the_cli_reports_it_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command configures logging first, which reads the settings: a bad one
    stops any command with one line naming it, never a traceback."""
    monkeypatch.setenv("NUDGE_CHECKPOINT_INTERVAL", "-1")
    assert main(["rules", "check", "rules/recipes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nudge: NUDGE_CHECKPOINT_INTERVAL: ")
    assert len(err.strip().splitlines()) == 1
