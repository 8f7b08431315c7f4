"""The engine's settings from the environment (prefix ``NUDGE_``), read in one place with
pydantic-settings. Command-line options win over them where both exist; the sources'
secrets are read by connectors/sources/config.py the same way.

========================================  ==============================================
``NUDGE_WRITE_TOKEN`` / ``ADMIN_TOKEN``    the HTTP tokens (both set: ``tokens.json`` is
/ ``READ_TOKEN``                           not used); the CLI's clients read them too
``NUDGE_LOG_LEVEL``                        any Python level name (default INFO)
``NUDGE_CHECKPOINT_INTERVAL``              seconds between checkpoints (default 10)
``NUDGE_CHECKPOINT_MODE``                  ``paced`` (default) or ``inline``
``NUDGE_CHECKPOINT_STEP``                  states per checkpoint transaction (2,000)
``NUDGE_CHECKPOINT_STEP_PAUSE_MS``         pause between those transactions (0)
``NUDGE_WORKER_PROFILE``                   a path: cProfile the worker into it
``NUDGE_DATA_KEY``                         encryption at rest: 32 bytes, base64
                                           (``nudge datakey``; docs/operations.md)
``NUDGE_DATA_KEY_PREVIOUS``                keys being rotated out, comma-separated
========================================  ==============================================

Read at the moment of use (:func:`environment`), not at import: a test or a parent
process sets them before starting the engine.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.exceptions import NudgeError

__all__ = ["Environment", "SettingsError", "environment"]


class SettingsError(NudgeError):
    """A ``NUDGE_`` variable that does not parse; the message names it."""


class Environment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUDGE_", extra="ignore", frozen=True)

    write_token: str | None = None
    admin_token: str | None = None
    read_token: str | None = None
    log_level: str = "INFO"
    checkpoint_interval: float = Field(default=10.0, gt=0)
    checkpoint_mode: str = "paced"
    checkpoint_step: int = Field(default=2_000, ge=0)
    checkpoint_step_pause_ms: float = Field(default=0.0, ge=0)
    worker_profile: Path | None = None
    data_key: SecretStr | None = None
    data_key_previous: SecretStr | None = None


def environment() -> Environment:
    """The settings as the environment has them now."""
    try:
        return Environment()
    except ValidationError as err:
        first = err.errors()[0]
        name = "NUDGE_" + "_".join(str(p) for p in first["loc"]).upper()
        raise SettingsError(f"{name}: {first['msg']} (got {first.get('input')!r})") from None
