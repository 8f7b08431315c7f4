"""Population models over HTTP (docs/rfm.md, docs/predictions.md), all admin:
``GET /v1/models`` (the RFM boundaries and CLV parameters in use, every stored CLV
version), ``POST /v1/models/rfm/refresh`` (recompute the RFM boundaries now) and
``POST /v1/models/reload`` (use the latest CLV parameters ``nudge models fit`` stored).

Two backends answer, through :class:`ModelsBackend`:

- the embedded runtime's ``models`` (engine/embedded/models.py), once it is ready;
- on the distributed ingest (a backend with a ``redis`` and no ``models``), a
  :class:`~engine.distributed.models.RedisModels` over that Redis: the merged boundaries
  and CLV versions the workers use. A refresh starts a round and answers 200 with the
  boundaries once the workers completed it, or 202 ``{"rfm": null, "requested_at": ms}``
  if they did not within its wait (the round goes on). A reload checks the latest stored
  version and tells the workers to load it now.

A backend with neither answers 501 ``not_served_here``.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web

from engine.http.base import BACKEND, auth, error, ok
from engine.intelligence.clv import CLVParams, ParamsError
from engine.intelligence.rfm import RfmBoundaries

__all__ = ["ModelsBackend", "install", "served_models"]


class ModelsBackend(Protocol):
    """What the endpoints need of a runtime's population models."""

    async def describe(self) -> dict[str, Any]:
        """The ``GET /v1/models`` body: ``{"rfm", "clv", "clv_versions"}``."""
        ...

    async def refresh_rfm(self) -> RfmBoundaries | None:
        """Recompute the boundaries now; None: requested, not done yet (``requested_at``
        on the backend then says since when)."""
        ...

    async def reload(self) -> CLVParams | None:
        """Use the latest stored CLV parameters (None: none stored); raises
        ``ParamsError`` / ``ValueError`` when they cannot be used (nothing changes)."""
        ...


_SERVED: web.AppKey[dict[str, Any]] = web.AppKey("nudge_models_served", dict)


def served_models(app: web.Application) -> ModelsBackend | None:
    """The backend's models as the endpoints use them (None: not served here). The
    distributed ingest's view over its Redis is made on first use and kept."""
    backend = app[BACKEND]
    if hasattr(backend, "models"):
        models: ModelsBackend | None = backend.models
        return models
    cache = app[_SERVED]
    if "models" not in cache:
        from engine.distributed.models import RedisModels
        from engine.distributed.storage.redis import RedisState

        redis = getattr(backend, "redis", None)
        cache["models"] = RedisModels(redis) if isinstance(redis, RedisState) else None
    got: ModelsBackend | None = cache["models"]
    return got


def _models(request: web.Request, scope: str = "admin") -> ModelsBackend | web.Response:
    if (denied := auth(request, scope)) is not None:
        return denied
    backend = request.app[BACKEND]
    models = served_models(request.app)
    if not hasattr(backend, "models"):
        if models is None:
            return error(
                501,
                "not_served_here",
                "population models need the embedded runtime or a Redis (distributed)",
            )
        return models
    if models is None or not backend.ready:
        return error(503, "not_ready", "starting, recovering or stopping")
    return models


async def get_models(request: web.Request) -> web.Response:
    models = _models(request, "read")
    if isinstance(models, web.Response):
        return models
    return ok(await models.describe())


async def refresh_rfm(request: web.Request) -> web.Response:
    models = _models(request)
    if isinstance(models, web.Response):
        return models
    bounds = await models.refresh_rfm()
    if bounds is None:
        return ok({"rfm": None, "requested_at": getattr(models, "requested_at", None)}, 202)
    return ok({"rfm": bounds.to_dict()})


async def reload_models(request: web.Request) -> web.Response:
    models = _models(request)
    if isinstance(models, web.Response):
        return models
    try:
        params = await models.reload()
    except (ParamsError, ValueError, TypeError, orjson.JSONDecodeError) as err:
        return error(
            409, "invalid_model", f"the latest stored CLV parameters cannot be used: {err}"
        )
    return ok({"clv": None if params is None else params.to_dict()})


def install(app: web.Application) -> None:
    app[_SERVED] = {}
    app.router.add_get("/v1/models", get_models)
    app.router.add_post("/v1/models/rfm/refresh", refresh_rfm)
    app.router.add_post("/v1/models/reload", reload_models)
