"""Bearer tokens: one scope writes events, one administers (rules, customers).

``nudge run`` creates ``tokens.json`` in the data directory on first start (mode 0600) and
logs its path; tokens can also come from ``NUDGE_WRITE_TOKEN`` / ``NUDGE_ADMIN_TOKEN``.
The admin token may also write events.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Tokens"]


@dataclass(frozen=True)
class Tokens:
    write: str
    admin: str

    @classmethod
    def load_or_create(cls, data_dir: Path) -> tuple[Tokens, Path, bool]:
        """Tokens from the environment, else ``tokens.json`` (created when missing).
        Returns (tokens, path, created)."""
        path = data_dir / "tokens.json"
        env_w, env_a = os.environ.get("NUDGE_WRITE_TOKEN"), os.environ.get("NUDGE_ADMIN_TOKEN")
        if env_w and env_a:
            return cls(env_w, env_a), path, False
        if path.exists():
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(d["write"]), str(d["admin"])), path, False
        data_dir.mkdir(parents=True, exist_ok=True)
        tokens = cls("nw_" + secrets.token_urlsafe(24), "na_" + secrets.token_urlsafe(24))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"write": tokens.write, "admin": tokens.admin}, fh, indent=2)
        return tokens, path, True

    def scope_of(self, header: str | None) -> str | None:
        """``admin``, ``write`` or None for an Authorization header value: ``Bearer
        TOKEN``, or ``Basic`` with the token as user name and any password (Segment and
        RudderStack clients send their write key so)."""
        if not header:
            return None
        if header.startswith("Bearer "):
            token = header[7:].strip()
        elif header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            token = decoded.partition(":")[0]
        else:
            return None
        if not token:
            return None
        if hmac.compare_digest(token, self.admin):
            return "admin"
        if hmac.compare_digest(token, self.write):
            return "write"
        return None
