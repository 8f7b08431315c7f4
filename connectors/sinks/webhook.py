"""A sink that POSTs each action as JSON to an HTTP endpoint (a CRM, a messaging service)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import orjson
from yarl import URL

from connectors.exceptions import ConnectorError, SinkBackpressure, SinkError
from connectors.retry import RetryPolicy
from connectors.sinks.base import action_payload
from connectors.sinks.signing import WebhookSigner
from engine.types import Action

__all__ = ["RETRYABLE_STATUSES", "WebhookSink", "parse_retry_after"]

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
"""4xx statuses worth retrying; every 5xx is retryable too."""
_BACKPRESSURE_STATUSES = frozenset({429, 503})
_BODY_SNIPPET = 200


class WebhookSink:
    """POSTs ``action_payload(action)`` as JSON to ``url``, one request per action.

    Each request carries ``Content-Type: application/json`` and ``Idempotency-Key:
    <action.idempotency_key>`` (the same on every retry and replay: receivers dedupe on it),
    plus ``headers`` (which cannot override those two). With a ``signer``, also the
    Standard Webhooks headers ``webhook-id`` (the idempotency key), ``webhook-timestamp``
    (``now_s()`` at this attempt) and ``webhook-signature`` (connectors/sinks/signing.py).

    ``send`` makes ONE attempt, bounded by ``timeout`` seconds in all, and:

    - returns on any 2xx (the body is ignored);
    - raises :class:`SinkBackpressure` on 429/503 with a usable ``Retry-After``;
    - raises ``SinkError(retryable=True)`` on 408/409/425/429/5xx, connection errors,
      timeouts;
    - raises ``SinkError(retryable=False)`` on any other status (e.g. 400, 401, 404, 3xx:
      redirects are not followed) and when the action cannot be encoded as JSON.

    ``policy`` (or, without one, ``max_attempts``, ``base_delay`` and ``max_delay``) is
    :attr:`policy`, the :class:`RetryPolicy` the runtime delivers to this sink with.

    ``session``: an existing ``aiohttp.ClientSession`` to use; it is not closed by
    :meth:`close`. Without one, :meth:`start` (or the first ``send``) opens one and
    :meth:`close` closes it.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
        base_delay: float = 0.5,
        max_delay: float = 300.0,
        session: aiohttp.ClientSession | None = None,
        *,
        name: str = "webhook",
        policy: RetryPolicy | None = None,
        signer: WebhookSigner | None = None,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConnectorError(f"not an http(s) URL: {url!r}", field="url")
        if not timeout > 0:
            raise ConnectorError("must be > 0", field="timeout")
        self.name = name
        self.url = parsed
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = dict(headers or {})
        self.policy = (
            policy
            if policy is not None
            else RetryPolicy(max_attempts=max_attempts, base_delay=base_delay, max_delay=max_delay)
        )
        self.signer = signer
        self._now_s = now_s
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:  # headers may hold secrets: never print them
        return f"WebhookSink(name={self.name!r}, url={str(self.url.with_query(None))!r})"

    async def start(self) -> None:
        """Open the HTTP session (unless one was given). Idempotent."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        """Close the session if this sink opened it. Idempotent."""
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def send(self, action: Action) -> None:
        """POST ``action`` once; see the class docstring for the outcomes."""
        try:
            body = orjson.dumps(action_payload(action), option=orjson.OPT_NON_STR_KEYS)
        except TypeError as err:
            raise SinkError(f"action cannot be encoded as JSON: {err}", retryable=False) from err
        if self._session is None:
            await self.start()
        assert self._session is not None
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": action.idempotency_key,
        }
        if self.signer is not None:
            stamp = int(self._now_s())
            headers.update(self.signer.headers(action.idempotency_key, stamp, body))
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                snippet = (await resp.content.read(_BODY_SNIPPET)).decode("utf-8", "replace")
                raise _status_error(resp.status, resp.headers.get("Retry-After"), snippet)
        except TimeoutError as err:
            raise SinkError(
                f"POST {self.url.host} timed out after {self.timeout.total}s", retryable=True
            ) from err
        except aiohttp.ClientError as err:
            raise SinkError(f"POST {self.url.host} failed: {err!r}", retryable=True) from err


def _status_error(status: int, retry_after_header: str | None, snippet: str) -> SinkError:
    message = f"HTTP {status}" + (f": {snippet.strip()}" if snippet.strip() else "")
    if status in _BACKPRESSURE_STATUSES and retry_after_header is not None:
        retry_after = parse_retry_after(retry_after_header)
        if retry_after is not None:
            return SinkBackpressure(message, retry_after=retry_after, status=status)
    retryable = status in RETRYABLE_STATUSES or 500 <= status < 600
    return SinkError(message, retryable=retryable, status=status)


def parse_retry_after(value: str, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (``"120"``) or an HTTP date
    (relative to ``now``, default the current UTC time; a past date gives 0). ``None`` if
    the header cannot be parsed."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None  # NaN and negatives are unusable
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
