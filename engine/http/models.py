"""Population models over HTTP (docs/rfm.md, docs/predictions.md), all admin:
``GET /v1/models`` (the RFM boundaries and CLV parameters in use, every stored CLV
version), ``POST /v1/models/rfm/refresh`` (recompute the RFM boundaries now) and
``POST /v1/models/reload`` (use the latest CLV parameters ``nudge models fit`` stored).

The embedded runtime answers (engine/embedded/models.py); the distributed ingest holds no
customer state and answers 501 ``not_served_here``.
"""

from __future__ import annotations

from aiohttp import web

from engine.embedded.models import Models
from engine.http.base import BACKEND, auth, error, ok
from engine.intelligence.clv import ParamsError

__all__ = ["install"]


def _models(request: web.Request) -> Models | web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    backend = request.app[BACKEND]
    if not hasattr(backend, "models"):
        return error(
            501,
            "not_served_here",
            "population models are kept by the embedded runtime (nudge run)",
        )
    models = backend.models
    if models is None or not backend.ready:
        return error(503, "not_ready", "starting, recovering or stopping")
    assert isinstance(models, Models)
    return models


async def get_models(request: web.Request) -> web.Response:
    models = _models(request)
    if isinstance(models, web.Response):
        return models
    return ok(await models.describe())


async def refresh_rfm(request: web.Request) -> web.Response:
    models = _models(request)
    if isinstance(models, web.Response):
        return models
    bounds = await models.refresh_rfm()
    return ok({"rfm": bounds.to_dict()})


async def reload_models(request: web.Request) -> web.Response:
    models = _models(request)
    if isinstance(models, web.Response):
        return models
    try:
        params = await models.reload()
    except (ParamsError, ValueError) as err:
        return error(
            409, "invalid_model", f"the latest stored CLV parameters cannot be used: {err}"
        )
    return ok({"clv": None if params is None else params.to_dict()})


def install(app: web.Application) -> None:
    app.router.add_get("/v1/models", get_models)
    app.router.add_post("/v1/models/rfm/refresh", refresh_rfm)
    app.router.add_post("/v1/models/reload", reload_models)
