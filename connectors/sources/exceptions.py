"""Source errors: what a request to a tracking source got wrong, as an HTTP answer."""

from __future__ import annotations

from typing import Any

from connectors.exceptions import ConnectorError

__all__ = ["SourceError"]


class SourceError(ConnectorError):
    """A source request that cannot be accepted, whole: nothing of it is applied.

    ``status`` is the HTTP status to answer (400 malformed, 401 bad signature or
    credentials, 413 too large); ``code`` a short machine-readable word, also the
    ``reason`` label of ``nudge_events_rejected_total``; ``field`` the JSON path (or
    header / form field) at fault; ``extra`` more members of the error body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "invalid_field",
        field: str | None = "$",
        **extra: Any,
    ) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code
        self.extra = extra
