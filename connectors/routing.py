"""Which sink each action goes to: named sinks and per-rule / per-channel routes.

Config (a dict, typically from YAML)::

    default: log                      # sink for actions no route matches (default "log")
    sinks:                            # name -> sink; "log" exists even if not listed
      crm:  {type: webhook, url: "https://crm.example/hooks/nudge", timeout: 5,
             headers: {Authorization: "Bearer ..."}, max_attempts: 5}
      file: {type: jsonl, path: actions.jsonl, fsync_every: 1}
      log:  {type: log, level: INFO}
      email: {type: sendgrid, api_key_env: SENDGRID_API_KEY, from: {email: shop@example.com},
              templates: {cart_reminder: d-abc123}}
      sms:  {type: twilio, account_sid: AC..., auth_token_env: TWILIO_AUTH_TOKEN,
             from: "+15550100", templates_dir: sms/}
      push: {type: fcm, service_account_file: /secrets/fcm.json}
    routes:                           # first match wins
      - {rule: vip-segment, sink: crm}
      - {channel: sms, sink: file}
      - {rule: winback, channel: email, sink: crm}   # both must match

The provider sinks (sendgrid, twilio, fcm) are documented in docs/sinks.md and in their
modules; their credentials come from ``<secret>_env`` / ``<secret>_file`` keys
(:mod:`connectors.sinks.provider`). :func:`check_config` lists every problem of a config
with its location (``nudge sinks check``); :meth:`Router.from_config` raises the first.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors.breaker import BreakerPolicy
from connectors.deadline import Deadlines, RuleWithin
from connectors.exceptions import ConnectorError
from connectors.options import DeliveryOptions
from connectors.retry import RetryPolicy
from connectors.sinks.base import Sink
from connectors.sinks.fcm import FcmConfig, FcmSink, ServiceAccount
from connectors.sinks.jsonl import JsonlSink
from connectors.sinks.log import LogSink
from connectors.sinks.provider import (
    ProviderConfig,
    SecretProblem,
    read_secret,
    read_secrets,
    secret_problems,
)
from connectors.sinks.sendgrid import SendGridConfig, SendGridSink
from connectors.sinks.signing import WebhookSigner, parse_secrets
from connectors.sinks.twilio import TwilioConfig, TwilioSink, load_templates
from connectors.sinks.webhook import WebhookSink
from engine.types import Action

__all__ = ["Problem", "Route", "Router", "check_config"]

logger = logging.getLogger(__name__)

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


class _WebhookConfig(DeliveryOptions):
    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    headers: dict[str, str] = {}
    # Standard Webhooks signing: one or two whsec_ secrets (new first), whitespace-separated
    signing_secret_env: _Name | None = None
    signing_secret_file: _Name | None = None

    @model_validator(mode="after")
    def _one_secret_source(self) -> _WebhookConfig:
        if self.signing_secret_env is not None and self.signing_secret_file is not None:
            raise ValueError("give signing_secret_env or signing_secret_file, not both")
        return self

    def secret_source(self) -> tuple[str, str] | None:
        if self.signing_secret_env is not None:
            return "signing_secret_env", self.signing_secret_env
        if self.signing_secret_file is not None:
            return "signing_secret_file", self.signing_secret_file
        return None


_SinkConfig = _LogConfig | _JsonlConfig | _WebhookConfig | SendGridConfig | TwilioConfig | FcmConfig
_SINK_MODELS: dict[str, type[_SinkConfig]] = {
    "log": _LogConfig,
    "jsonl": _JsonlConfig,
    "webhook": _WebhookConfig,
    "sendgrid": SendGridConfig,
    "twilio": TwilioConfig,
    "fcm": FcmConfig,
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
        return self.matches_on(action.rule_id, action.channel)

    def matches_on(self, rule_id: str, channel: str) -> bool:
        """Whether sends of ``rule_id`` on ``channel`` take this route."""
        return (self.rule is None or self.rule == rule_id) and (
            self.channel is None or self.channel == channel
        )


@dataclass(frozen=True)
class Problem:
    """One problem in a routing config: ``loc`` is its path (``("sinks", "crm", "url")``,
    ``()`` for the whole config); ``warning``: only with :func:`check_config`'s
    ``secrets="warn"`` (a credential that cannot be read here)."""

    loc: tuple[str | int, ...]
    message: str
    warning: bool = False

    @property
    def field(self) -> str:
        """``loc`` as a JSON path (``$.sinks.crm.url``, ``$.routes[0].sink``)."""
        return _json_path("$", self.loc)


class Router:
    """Named sinks and the routes between them.

    :meth:`sink_for` is the first route matching the action (in config order), else the
    default sink. Every sink is started by :meth:`start_all` and closed by
    :meth:`close_all`, used by a route or not.
    """

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        routes: Sequence[Route],
        default: str,
        options: Mapping[str, DeliveryOptions] | None = None,
    ) -> None:
        for i, route in enumerate(routes):
            if route.sink not in sinks:
                raise ConnectorError(f"unknown sink {route.sink!r}", field=f"$.routes[{i}].sink")
        if default not in sinks:
            raise ConnectorError(f"unknown sink {default!r}", field="$.default")
        self.sinks: dict[str, Sink] = dict(sinks)
        self.routes: tuple[Route, ...] = tuple(routes)
        self.default = default
        self.options: dict[str, DeliveryOptions] = dict(options or {})
        self._started: list[Sink] = []

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, env: Mapping[str, str] | None = None
    ) -> Router:
        """Validate ``config`` (see the module docstring) and build the sinks (not started).

        Credentials are read now, from ``env`` (default ``os.environ``) and files.
        Raises :class:`ConnectorError` whose ``field`` is the JSON path of the first bad
        field (``$.sinks.crm.url``, ``$.routes[0].sink``, ``$.sinks.email.api_key_env``);
        the message lists every problem.
        """
        problems = check_config(config, env=env)
        if problems:
            first = problems[0]
            message = first.message + "".join(f"; {p.field}: {p.message}" for p in problems[1:])
            raise ConnectorError(message, field=first.field)
        cfg = _RoutingConfig.model_validate(config)
        sinks: dict[str, Sink] = {}
        options: dict[str, DeliveryOptions] = {}
        for name, raw in cfg.sinks.items():
            sinks[name] = _build_sink(name, raw, f"$.sinks.{name}", env)
            sink_cfg = _SINK_MODELS[raw["type"]].model_validate(raw)
            if isinstance(sink_cfg, DeliveryOptions):
                options[name] = sink_cfg
        sinks.setdefault("log", LogSink("log"))
        routes = [Route(sink=r.sink, rule=r.rule, channel=r.channel) for r in cfg.routes]
        return cls(sinks, routes, cfg.default, options)

    def sink_name(self, rule_id: str, channel: str) -> str:
        """The name of the sink sends of ``rule_id`` on ``channel`` go to."""
        for route in self.routes:
            if route.matches_on(rule_id, channel):
                return route.sink
        return self.default

    def sink_for(self, action: Action) -> Sink:
        """The sink ``action`` goes to."""
        return self.sinks[self.sink_name(action.rule_id, action.channel)]

    def needs_address(self, rule_id: str, channel: str) -> bool:
        """Whether sends of ``rule_id`` on ``channel`` go to a sink that cannot send
        without a recipient address (a provider sink: its ``needs_address`` is true).
        Pass it to :meth:`rules.ruleset.RuleSet.require_addresses`."""
        sink = self.sinks[self.sink_name(rule_id, channel)]
        return getattr(sink, "needs_address", False) is True

    def policy_for(self, sink: Sink, default: RetryPolicy) -> RetryPolicy:
        """The retry policy to deliver to ``sink`` with: its own ``policy`` attribute if it
        has one (a webhook's ``max_attempts``/``base_delay``/``max_delay``), else
        ``default``."""
        own = getattr(sink, "policy", None)
        return own if isinstance(own, RetryPolicy) else default

    def breaker_policy(self, sink_name: str) -> BreakerPolicy:
        """The circuit breaker settings of ``sink_name`` (its ``breaker:``, else the
        defaults)."""
        opts = self.options.get(sink_name)
        return opts.breaker.policy() if opts is not None else BreakerPolicy()

    def deadlines(self, per_rule: RuleWithin | None = None) -> Deadlines:
        """Send-by deadlines: ``per_rule`` (the rule send steps'), then each sink's
        ``deliver_within``, then the channel defaults (connectors/deadline.py)."""
        per_sink = {
            name: opts.within()
            for name, opts in self.options.items()
            if opts.deliver_within is not None
        }
        return Deadlines(per_sink=per_sink, per_rule=per_rule)

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


def check_config(
    config: Any,
    *,
    env: Mapping[str, str] | None = None,
    secrets: Literal["error", "warn"] = "error",
) -> list[Problem]:
    """Every problem of a routing config, in config order: structure, each sink's fields,
    credentials (unreadable: an error, or a warning with ``secrets="warn"``), a Twilio
    sink's templates directory, an FCM sink's service account, the sinks routes name.

    Reads credentials (from ``env``, default ``os.environ``, and files) and template
    files, opens no connection. Empty means :meth:`Router.from_config` builds it.
    """
    if not isinstance(config, Mapping):
        return [Problem((), f"expected a mapping, got {type(config).__name__}")]
    problems = _model_problems(_RoutingConfig, config, ())
    if problems:
        return problems
    cfg = _RoutingConfig.model_validate(config)
    names = set(cfg.sinks) | {"log"}
    for name, raw in cfg.sinks.items():
        problems.extend(_sink_problems(name, raw, env, secrets == "warn"))
    for i, route in enumerate(cfg.routes):
        if route.sink not in names:
            problems.append(Problem(("routes", i, "sink"), f"unknown sink {route.sink!r}"))
    if cfg.default not in names:
        problems.append(Problem(("default",), f"unknown sink {cfg.default!r}"))
    return problems


def _model_problems(
    model: type[BaseModel], data: Any, base: tuple[str | int, ...]
) -> list[Problem]:
    try:
        model.model_validate(data)
    except ValidationError as err:
        return [
            Problem((*base, *e["loc"]), e["msg"].removeprefix("Value error, "))
            for e in err.errors(include_url=False)
        ]
    return []


def _sink_problems(
    name: str, raw: dict[str, Any], env: Mapping[str, str] | None, warn_secrets: bool
) -> list[Problem]:
    base: tuple[str | int, ...] = ("sinks", name)
    kind = raw.get("type")
    model = _SINK_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        expected = ", ".join(sorted(_SINK_MODELS))
        return [Problem((*base, "type"), f"unknown sink type {kind!r} (expected {expected})")]
    problems = _model_problems(model, raw, base)
    if problems:
        return problems
    cfg = model.model_validate(raw)
    if isinstance(cfg, _WebhookConfig):
        return _signing_problems(cfg, base, env, warn_secrets)
    if not isinstance(cfg, ProviderConfig):
        return []
    unreadable = secret_problems(cfg, env)
    problems.extend(Problem((*base, p.key), p.message, warn_secrets) for p in unreadable)
    if isinstance(cfg, TwilioConfig):
        try:
            templates = load_templates(cfg.templates_dir)
        except ConnectorError as err:
            problems.append(Problem((*base, "templates_dir"), err.message))
        else:
            if not templates:
                problems.append(
                    Problem((*base, "templates_dir"), f"no *.txt templates in {cfg.templates_dir}")
                )
    if isinstance(cfg, FcmConfig) and not unreadable:
        key = "service_account_env" if cfg.service_account_env else "service_account_file"
        try:
            account = ServiceAccount.from_json(read_secrets(cfg, "$", env)["service_account"])
        except ConnectorError as err:
            problems.append(Problem((*base, key), err.message))
        else:
            if not (cfg.project_id or account.project_id):
                problems.append(
                    Problem((*base, "project_id"), "required: the service account has none")
                )
    return problems


def _signing_problems(
    cfg: _WebhookConfig,
    base: tuple[str | int, ...],
    env: Mapping[str, str] | None,
    warn_secrets: bool,
) -> list[Problem]:
    source = cfg.secret_source()
    if source is None:
        return []
    got = read_secret(*source, env)
    if isinstance(got, SecretProblem):
        return [Problem((*base, got.key), got.message, warn_secrets)]
    try:
        parse_secrets(got)
    except ConnectorError as err:
        return [Problem((*base, source[0]), err.message)]
    return []


def _signer(cfg: _WebhookConfig, path: str, env: Mapping[str, str] | None) -> WebhookSigner | None:
    source = cfg.secret_source()
    if source is None:
        return None
    got = read_secret(*source, env)
    if isinstance(got, SecretProblem):
        raise ConnectorError(got.message, field=f"{path}.{got.key}")
    return WebhookSigner(parse_secrets(got, field=f"{path}.{source[0]}"))


def _build_sink(name: str, raw: dict[str, Any], path: str, env: Mapping[str, str] | None) -> Sink:
    cfg = _SINK_MODELS[raw["type"]].model_validate(raw)  # check_config passed
    if isinstance(cfg, _LogConfig):
        return LogSink(name, level=logging.getLevelNamesMapping()[cfg.level])
    if isinstance(cfg, _JsonlConfig):
        return JsonlSink(cfg.path, fsync_every=cfg.fsync_every, name=name)
    if isinstance(cfg, _WebhookConfig):
        return WebhookSink(
            cfg.url,
            timeout=cfg.timeout,
            headers=cfg.headers,
            name=name,
            policy=cfg.policy(),
            signer=_signer(cfg, path, env),
        )
    secrets = read_secrets(cfg, path, os.environ if env is None else env)
    try:
        if isinstance(cfg, SendGridConfig):
            return SendGridSink.from_config(name, cfg, secrets)
        if isinstance(cfg, TwilioConfig):
            return TwilioSink.from_config(name, cfg, secrets)
        return FcmSink.from_config(name, cfg, secrets)
    except ConnectorError as err:
        if err.field is None or err.field.startswith("$"):
            raise
        raise ConnectorError(err.message, field=f"{path}.{err.field}") from None


def _json_path(base: str, loc: tuple[int | str, ...]) -> str:
    out = base
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
