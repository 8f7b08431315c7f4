"""Which sink each action goes to: named sinks and per-rule / per-channel routes.

Config (a dict, typically from YAML)::

    default: log                      # sink for actions no route matches (default "log")
    sinks:                            # name -> sink; "log" exists even if not listed
      crm:  {type: webhook, url: "https://crm.example/hooks/nudge", timeout: 5,
             headers: {Authorization: "Bearer ..."}, max_attempts: 5}
      file: {type: jsonl, path: actions.jsonl, fsync_every: 1}
      log:  {type: log, level: INFO}
    routes:                           # first match wins
      - {rule: vip-segment, sink: crm}
      - {channel: sms, sink: file}
      - {rule: winback, channel: email, sink: crm}   # both must match
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors.exceptions import ConnectorError
from connectors.retry import RetryPolicy
from connectors.sinks.base import Sink
from connectors.sinks.jsonl import JsonlSink
from connectors.sinks.log import LogSink
from connectors.sinks.webhook import WebhookSink
from engine.types import Action

__all__ = ["Route", "Router"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)
_Name = Annotated[str, Field(min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LogConfig(_Strict):
    type: Literal["log"]
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class _JsonlConfig(_Strict):
    type: Literal["jsonl"]
    path: Annotated[str, Field(min_length=1)]
    fsync_every: Annotated[int, Field(ge=0)] = 1


class _WebhookConfig(_Strict):
    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    headers: dict[str, str] = {}
    max_attempts: Annotated[int, Field(ge=1)] = 5
    base_delay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.2
    max_delay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 30.0


_SINK_MODELS: dict[str, type[_LogConfig | _JsonlConfig | _WebhookConfig]] = {
    "log": _LogConfig,
    "jsonl": _JsonlConfig,
    "webhook": _WebhookConfig,
}


class _RouteConfig(_Strict):
    rule: _Name | None = None
    channel: _Name | None = None
    sink: _Name

    @model_validator(mode="after")
    def _needs_a_condition(self) -> _RouteConfig:
        if self.rule is None and self.channel is None:
            raise ValueError("a route needs 'rule', 'channel' or both")
        return self


class _RoutingConfig(_Strict):
    default: _Name = "log"
    sinks: dict[_Name, dict[str, Any]] = {}
    routes: list[_RouteConfig] = []


@dataclass(frozen=True)
class Route:
    """Send actions of rule ``rule`` (if set) on channel ``channel`` (if set) to ``sink``."""

    sink: str
    rule: str | None = None
    channel: str | None = None

    def matches(self, action: Action) -> bool:
        return (self.rule is None or self.rule == action.rule_id) and (
            self.channel is None or self.channel == action.channel
        )


class Router:
    """Named sinks and the routes between them.

    :meth:`sink_for` is the first route matching the action (in config order), else the
    default sink. Every sink is started by :meth:`start_all` and closed by
    :meth:`close_all`, used by a route or not.
    """

    def __init__(self, sinks: Mapping[str, Sink], routes: Sequence[Route], default: str) -> None:
        for i, route in enumerate(routes):
            if route.sink not in sinks:
                raise ConnectorError(f"unknown sink {route.sink!r}", field=f"$.routes[{i}].sink")
        if default not in sinks:
            raise ConnectorError(f"unknown sink {default!r}", field="$.default")
        self.sinks: dict[str, Sink] = dict(sinks)
        self.routes: tuple[Route, ...] = tuple(routes)
        self.default = default
        self._started: list[Sink] = []

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Router:
        """Validate ``config`` (see the module docstring) and build the sinks (not started).

        Raises :class:`ConnectorError` whose ``field`` is the JSON path of the first bad
        field (``$.sinks.crm.url``, ``$.routes[0].sink``); the message lists every problem.
        """
        cfg = _validate(_RoutingConfig, config, "$")
        sinks: dict[str, Sink] = {}
        for name, raw in cfg.sinks.items():
            sinks[name] = _build_sink(name, raw, f"$.sinks.{name}")
        sinks.setdefault("log", LogSink("log"))
        routes = [Route(sink=r.sink, rule=r.rule, channel=r.channel) for r in cfg.routes]
        return cls(sinks, routes, cfg.default)

    def sink_for(self, action: Action) -> Sink:
        """The sink ``action`` goes to."""
        for route in self.routes:
            if route.matches(action):
                return self.sinks[route.sink]
        return self.sinks[self.default]

    def policy_for(self, sink: Sink, default: RetryPolicy) -> RetryPolicy:
        """The retry policy to deliver to ``sink`` with: its own ``policy`` attribute if it
        has one (a webhook's ``max_attempts``/``base_delay``/``max_delay``), else
        ``default``."""
        own = getattr(sink, "policy", None)
        return own if isinstance(own, RetryPolicy) else default

    async def start_all(self) -> None:
        """Start every sink, in config order. If one fails, the ones already started are
        closed and the error propagates."""
        for sink in self.sinks.values():
            try:
                await sink.start()
            except BaseException:
                await self.close_all()
                raise
            self._started.append(sink)

    async def close_all(self) -> None:
        """Close every started sink, all of them even if some fail (failures are logged)."""
        started, self._started = self._started, []
        results = await asyncio.gather(*(s.close() for s in started), return_exceptions=True)
        for sink, result in zip(started, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("closing sink %s failed: %r", sink.name, result)


def _build_sink(name: str, raw: dict[str, Any], path: str) -> Sink:
    kind = raw.get("type")
    model = _SINK_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        expected = ", ".join(sorted(_SINK_MODELS))
        raise ConnectorError(
            f"unknown sink type {kind!r} (expected {expected})", field=f"{path}.type"
        )
    cfg = _validate(model, raw, path)
    if isinstance(cfg, _LogConfig):
        return LogSink(name, level=logging.getLevelNamesMapping()[cfg.level])
    if isinstance(cfg, _JsonlConfig):
        return JsonlSink(cfg.path, fsync_every=cfg.fsync_every, name=name)
    return WebhookSink(
        cfg.url,
        timeout=cfg.timeout,
        headers=cfg.headers,
        max_attempts=cfg.max_attempts,
        base_delay=cfg.base_delay,
        max_delay=cfg.max_delay,
        name=name,
    )


def _validate(model: type[_M], data: Any, path: str) -> _M:
    if not isinstance(data, Mapping):
        raise ConnectorError(f"expected a mapping, got {type(data).__name__}", field=path)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = [(_json_path(path, e["loc"]), e["msg"]) for e in err.errors()]
        message = problems[0][1] + "".join(f"; {p}: {m}" for p, m in problems[1:])
        raise ConnectorError(message, field=problems[0][0]) from None


def _json_path(base: str, loc: tuple[int | str, ...]) -> str:
    out = base
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
