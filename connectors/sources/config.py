"""Secrets and addresses the sources need, from the environment (prefix ``NUDGE_``) or a
secrets file (``NUDGE_SECRETS_FILE``, YAML or JSON with the same keys in lower case).

Printing a config never shows a secret (``SecretStr``). A source whose secret is unset is
not served: its route answers 404 ``source_disabled``, so nothing unverified gets in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.exceptions import ConnectorError

__all__ = ["SourcesConfig"]


class SourcesConfig(BaseSettings):
    """``shopify_secret``: the app's shared secret (``X-Shopify-Hmac-Sha256``).
    ``sendgrid_verification_key``: the Event Webhook's public ECDSA key (base64 DER or
    PEM). ``twilio_auth_token``: signs ``X-Twilio-Signature``. ``public_url``: the URL
    providers reach Nudge at (``https://nudge.example.com``), which Twilio signs and
    status callbacks are built from; default ``http://127.0.0.1:8080``."""

    model_config = SettingsConfigDict(env_prefix="NUDGE_", extra="ignore", frozen=True)

    shopify_secret: SecretStr | None = None
    sendgrid_verification_key: SecretStr | None = None
    twilio_auth_token: SecretStr | None = None
    public_url: str = "http://127.0.0.1:8080"

    @classmethod
    def load(cls, path: Path | None = None) -> SourcesConfig:
        """From the environment and ``path`` (or ``NUDGE_SECRETS_FILE``) if set; a key in
        the file wins over the environment. Raises ConnectorError naming the file on a
        bad one."""
        if path is None and os.environ.get("NUDGE_SECRETS_FILE"):
            path = Path(os.environ["NUDGE_SECRETS_FILE"])
        values: dict[str, Any] = {}
        if path is not None:
            try:
                text = path.read_text(encoding="utf-8")
                loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError) as err:
                raise ConnectorError(f"{path}: cannot read secrets file: {err}") from None
            if not isinstance(loaded, dict):
                raise ConnectorError(f"{path}: expected a mapping of secret names to values")
            values = {str(k).lower(): v for k, v in loaded.items()}
        return cls(**values)
