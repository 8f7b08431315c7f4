"""What the provider sinks (SendGrid, Twilio, FCM) share: config fields, credentials, one
paced HTTP attempt, HTTP status to SinkError, and ``$name`` text templates.

Credentials (uniform for every provider): a secret field ``X`` of a sink's config is given
as ``X_env: VAR`` (the environment variable ``VAR`` holds the value) or ``X_file: /path``
(the file holds it; surrounding whitespace is stripped), exactly one of the two. The value
is read when the sink is built (at start) and kept as a :class:`pydantic.SecretStr`: it
never appears in ``repr``/``str`` of a sink or config, in an error or in a log line. A
variable that is unset or empty, or a file that cannot be read or is empty, is a
:class:`ConnectorError` whose ``field`` names the config key (``$.sinks.email.api_key_env``).
"""

from __future__ import annotations

import logging
import os
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, TypedDict

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from yarl import URL

from connectors.exceptions import ConnectorError, SinkBackpressure, SinkError
from connectors.options import DeliveryOptions
from connectors.ratelimit import Monotonic, TokenBucket
from connectors.retry import RetryPolicy, Sleep
from connectors.sinks.webhook import RETRYABLE_STATUSES, parse_retry_after
from engine.types import Action

__all__ = [
    "EpochSeconds",
    "HttpReply",
    "ProviderConfig",
    "ProviderSink",
    "SecretProblem",
    "as_data_string",
    "fill_template",
    "read_secret",
    "read_secrets",
    "secret_problems",
    "status_error",
]

logger = logging.getLogger(__name__)

_BACKPRESSURE_STATUSES = frozenset({429, 503})
_DETAIL_MAX = 300
_Url = Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class EpochSeconds(Protocol):
    """The wall clock in seconds since the epoch (``time.time``; tests pass a fake)."""

    def __call__(self) -> float: ...


class ProviderConfig(DeliveryOptions):
    """Fields every provider sink has. Subclasses list their secret fields in
    ``SECRETS``; each needs exactly one of ``<name>_env`` / ``<name>_file``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    SECRETS: ClassVar[tuple[str, ...]] = ()
    DEFAULT_RATE: ClassVar[float] = 10.0

    base_url: _Url | None = Field(None, description="the provider's API root (tests: a fake)")
    timeout: _Positive = 10.0
    rate_per_second: _Positive | None = Field(
        None, description="requests per second to the provider (default: per provider)"
    )
    burst: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = Field(
        None, description="requests that may go at once before pacing (default: 1 s worth)"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_source_per_secret(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for name in cls.SECRETS:
                given = [k for k in (f"{name}_env", f"{name}_file") if data.get(k) is not None]
                if len(given) != 1:
                    how = "not both" if given else "one is required"
                    raise ValueError(f"give {name}_env or {name}_file ({how})")
        return data

    def rate(self) -> tuple[float, float]:
        """``(rate_per_second, burst)`` with the provider's defaults filled in."""
        rate = self.rate_per_second if self.rate_per_second is not None else self.DEFAULT_RATE
        burst = self.burst if self.burst is not None else max(1.0, rate)
        return rate, burst

    def transport(self) -> Transport:
        """The sink's HTTP options from this config (pace, burst, timeout, retries)."""
        rate, burst = self.rate()
        return Transport(
            timeout=self.timeout, rate_per_second=rate, burst=burst, policy=self.policy()
        )


@dataclass(frozen=True)
class SecretProblem:
    """A credential that cannot be read: ``key`` is the config key (``api_key_env``)."""

    key: str
    message: str


def _secret_source(cfg: BaseModel, name: str) -> tuple[str, str]:
    for suffix in ("env", "file"):
        value = getattr(cfg, f"{name}_{suffix}", None)
        if value is not None:
            return f"{name}_{suffix}", str(value)
    raise ConnectorError(f"give {name}_env or {name}_file")  # the model validator prevents it


def _read_one(key: str, where: str, env: Mapping[str, str]) -> str | SecretProblem:
    if key.endswith("_env"):
        value = env.get(where, "")
        if not value.strip():
            return SecretProblem(key, f"environment variable {where} is not set")
        return value.strip()
    try:
        text = Path(where).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        return SecretProblem(key, f"cannot read {where}: {reason or err}")
    if not text:
        return SecretProblem(key, f"{where} is empty")
    return text


def read_secret(key: str, where: str, env: Mapping[str, str] | None = None) -> str | SecretProblem:
    """One secret given as config key ``key`` (``*_env``: a variable; ``*_file``: a path)
    at ``where``: its value, stripped, or the problem reading it."""
    return _read_one(key, where, os.environ if env is None else env)


def secret_problems(
    cfg: ProviderConfig, env: Mapping[str, str] | None = None
) -> list[SecretProblem]:
    """Every secret of ``cfg`` that cannot be read (``env``: default ``os.environ``)."""
    env = os.environ if env is None else env
    out: list[SecretProblem] = []
    for name in cfg.SECRETS:
        got = _read_one(*_secret_source(cfg, name), env)
        if isinstance(got, SecretProblem):
            out.append(got)
    return out


def read_secrets(
    cfg: ProviderConfig, path: str, env: Mapping[str, str] | None = None
) -> dict[str, SecretStr]:
    """Each secret of ``cfg`` by name; ConnectorError at ``{path}.{key}`` if one is
    missing (the message names the variable or file, never a value)."""
    env = os.environ if env is None else env
    out: dict[str, SecretStr] = {}
    for name in cfg.SECRETS:
        key, where = _secret_source(cfg, name)
        got = _read_one(key, where, env)
        if isinstance(got, SecretProblem):
            raise ConnectorError(got.message, field=f"{path}.{got.key}")
        out[name] = SecretStr(got)
    return out


def fill_template(text: str, params: Mapping[str, Any], what: str) -> str:
    """``text`` with ``$name`` / ``${name}`` replaced by ``params[name]`` (``str()`` of it;
    ``$$`` is a literal ``$``; a ``$`` not followed by a name, as in ``$5``, stays).

    Raises a non-retryable :class:`SinkError` naming ``what`` and the first param that is
    missing or null."""
    tpl = string.Template(text)
    values: dict[str, str] = {}
    for ident in tpl.get_identifiers():
        value = params.get(ident)
        if value is None:
            raise SinkError(f"{what}: param {ident!r} is missing or null", retryable=False)
        values[ident] = value if isinstance(value, str) else _text(value)
    return tpl.safe_substitute(values)


def _text(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def as_data_string(value: Any) -> str:
    """A param as a string value (FCM data, SMS text): strings as they are, numbers and
    booleans as written in JSON, anything else as JSON."""
    return value if isinstance(value, str) else _text(value)


@dataclass(frozen=True)
class HttpReply:
    """One provider answer: status, headers and (up to 64 KiB of) body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


def status_error(
    provider: str, reply: HttpReply, detail: str, now: float | None = None
) -> SinkError:
    """The SinkError for a non-2xx ``reply``: :class:`SinkBackpressure` on 429/503 with a
    usable ``Retry-After`` (or, for SendGrid, ``X-RateLimit-Reset``: epoch seconds);
    retryable on 408/425/429/5xx; else not. ``detail`` is the provider's own message."""
    status = reply.status
    message = f"{provider} HTTP {status}" + (f": {detail[:_DETAIL_MAX]}" if detail else "")
    if status in _BACKPRESSURE_STATUSES:
        retry_after: float | None = None
        header = reply.headers.get("Retry-After")
        if header is not None:
            retry_after = parse_retry_after(header)
        reset = reply.headers.get("X-RateLimit-Reset")
        if retry_after is None and reset is not None:
            try:
                current = time.time() if now is None else now
                retry_after = max(0.0, float(reset) - current)
            except ValueError:
                retry_after = None
        if retry_after is not None and retry_after == retry_after:  # not NaN
            return SinkBackpressure(message, retry_after=retry_after, status=status)
    retryable = status in RETRYABLE_STATUSES or 500 <= status < 600
    return SinkError(message, retryable=retryable, status=status)


class Transport(TypedDict, total=False):
    """How a provider sink talks HTTP (the keyword arguments every provider sink takes
    and hands to :class:`ProviderSink`)."""

    timeout: float
    rate_per_second: float | None
    burst: float | None
    policy: RetryPolicy | None
    session: aiohttp.ClientSession | None
    clock: Monotonic
    sleep: Sleep | None


class ProviderSink:
    """The HTTP plumbing of a provider sink: a session, a :class:`TokenBucket` every send
    waits on, one request per attempt, :attr:`policy` for
    :func:`connectors.retry.deliver`. Provider sinks need an address (``needs_address``).

    Subclasses build the request in ``send`` and call :meth:`_request`.
    """

    needs_address: ClassVar[bool] = True
    provider: ClassVar[str] = "provider"

    default_rate: ClassVar[float] = 10.0  # a subclass sets its provider's pace

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float = 10.0,
        rate_per_second: float | None = None,
        burst: float | None = None,
        policy: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Monotonic = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        """``rate_per_second``: the sends' pace (default: the provider's,
        ``default_rate``), ``burst`` sends at once (default: one second's worth, at least
        one); ``policy``: retries (default RetryPolicy())."""
        if rate_per_second is None:
            rate_per_second = self.default_rate
        if burst is None:
            burst = max(1.0, rate_per_second)
        if policy is None:
            policy = RetryPolicy()
        parsed = URL(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConnectorError(f"not an http(s) URL: {base_url!r}", field="base_url")
        if not timeout > 0:
            raise ConnectorError("must be > 0", field="timeout")
        self.name = name
        self.base_url = str(parsed).rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.policy = policy
        self.bucket = (
            TokenBucket(rate_per_second, burst, clock=clock)
            if sleep is None
            else TokenBucket(rate_per_second, burst, clock=clock, sleep=sleep)
        )
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:  # never the credentials
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    __str__ = __repr__

    async def start(self) -> None:
        """Open the HTTP session (unless one was given). Idempotent."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        """Close the session if this sink opened it. Idempotent."""
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    @staticmethod
    def require_address(action: Action) -> str:
        """``action.to``; a non-retryable SinkError ``no address`` if it is empty."""
        if not action.to:
            raise SinkError(
                f"no address for {action.channel} (customer {action.customer_id})",
                retryable=False,
            )
        return action.to

    async def _request(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        data: bytes | Mapping[str, str],
        paced: bool = True,
    ) -> HttpReply:
        """POST once (after a token from the bucket when ``paced``); the reply whatever
        its status. Connection errors and timeouts are retryable SinkErrors."""
        if paced:
            await self.bucket.acquire()
        if self._session is None:
            await self.start()
        assert self._session is not None
        host = URL(url).host
        try:
            async with self._session.post(
                url,
                data=data,
                headers=dict(headers),
                timeout=self.timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.content.read(65536)
                return HttpReply(resp.status, dict(resp.headers), body)
        except TimeoutError as err:
            raise SinkError(
                f"{self.provider}: POST {host} timed out after {self.timeout.total}s",
                retryable=True,
            ) from err
        except aiohttp.ClientError as err:
            raise SinkError(
                f"{self.provider}: POST {host} failed: {type(err).__name__}", retryable=True
            ) from err

    def _fail(self, reply: HttpReply, detail: str) -> SinkError:
        """The error for a non-2xx reply; a Retry-After also holds the bucket, so the
        sink's other sends wait it out too instead of collecting their own 429s."""
        err = status_error(self.provider, reply, detail)
        if isinstance(err, SinkBackpressure):
            self.bucket.hold(err.retry_after)
        return err
