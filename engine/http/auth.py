"""Bearer tokens, three scopes: ``write`` sends events, ``read`` reads reports, segments
and customers (the marketer's console), ``admin`` does everything (rules, erase, models).

``nudge run`` creates ``tokens.json`` in the data directory on first start (mode 0600) and
logs its path; a ``tokens.json`` written before the read scope existed gets a read token
added on the next start. Tokens can also come from ``NUDGE_WRITE_TOKEN`` /
``NUDGE_ADMIN_TOKEN`` (and ``NUDGE_READ_TOKEN``; without it there is no read token: only
the admin token reads). The admin token may also write events and read.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from engine.settings import environment

__all__ = ["SCOPES", "Tokens"]

SCOPES = ("write", "read", "admin")
"""What a token may do: ``admin`` covers ``read`` and ``write``; ``read`` and ``write``
cover only themselves."""


def _write(path: Path, tokens: Tokens, *, create: bool) -> None:
    body = {"write": tokens.write, "admin": tokens.admin, "read": tokens.read}
    if create:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2)


def _same(got: bytes, token: str) -> bool:
    """Constant-time comparison, as bytes (a configured token may be any text)."""
    return hmac.compare_digest(got, token.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class Tokens:
    write: str
    admin: str
    read: str = ""  # empty: no read-only token (the admin token reads)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> tuple[Tokens, Path, bool]:
        """Tokens from the environment, else ``tokens.json`` (created when missing).
        Returns (tokens, path, created)."""
        path = data_dir / "tokens.json"
        env = environment()
        if env.write_token and env.admin_token:
            return cls(env.write_token, env.admin_token, env.read_token or ""), path, False
        if path.exists():
            d = json.loads(path.read_text(encoding="utf-8"))
            tokens = cls(str(d["write"]), str(d["admin"]), str(d.get("read") or ""))
            if not tokens.read:  # written before the read scope: add one
                tokens = cls(tokens.write, tokens.admin, "nr_" + secrets.token_urlsafe(24))
                _write(path, tokens, create=False)
            return tokens, path, False
        data_dir.mkdir(parents=True, exist_ok=True)
        tokens = cls(
            "nw_" + secrets.token_urlsafe(24),
            "na_" + secrets.token_urlsafe(24),
            "nr_" + secrets.token_urlsafe(24),
        )
        _write(path, tokens, create=True)
        return tokens, path, True

    def scope_of(self, header: str | None) -> str | None:
        """``admin``, ``write``, ``read`` or None for an Authorization header value: ``Bearer
        TOKEN``, or ``Basic`` with the token as user name and any password (Segment and
        RudderStack clients send their write key so). The scheme is case-insensitive (RFC
        9110 11.1); anything malformed (no token, non-ASCII, bad base64, an unknown
        scheme) is None, never an exception: the caller answers 401."""
        if not header:
            return None
        scheme, _, rest = header.strip().partition(" ")
        scheme = scheme.lower()
        rest = rest.strip()
        if scheme == "bearer":
            token = rest
        elif scheme == "basic":
            try:
                decoded = base64.b64decode(rest, validate=True).decode()
            except ValueError:  # binascii.Error, non-ASCII input, UnicodeDecodeError
                return None
            token = decoded.partition(":")[0]
        else:
            return None
        if not token or not token.isascii():  # our tokens are ASCII
            return None
        got = token.encode()
        if _same(got, self.admin):
            return "admin"
        if _same(got, self.write):
            return "write"
        if self.read and _same(got, self.read):
            return "read"
        return None

    def token_scope(self, token: str) -> str | None:
        """The scope of a bare token (a console login or cookie), as :meth:`scope_of`."""
        return self.scope_of("Bearer " + token) if token else None

    @staticmethod
    def allows(got: str, scope: str) -> bool:
        """Whether a token of scope ``got`` may do what needs ``scope``."""
        return got == "admin" or got == scope
