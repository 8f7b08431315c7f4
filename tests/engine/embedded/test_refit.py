"""The CLV refit schedule on `nudge run` (`--refit-every`, engine/embedded/models.py):
`nudge models fit` runs in a subprocess on the data directory on a (here tiny) interval
and the parameters it stored are reloaded into every partition's processor."""

from __future__ import annotations

import asyncio

import pytest

from engine.cli import build_parser
from tests.engine.embedded.conftest import Harness
from tests.engine.embedded.test_models_api import get_models, orders, populations


def test_the_run_option_parses_durations() -> None:
    args = build_parser().parse_args(["run", "--refit-every", "12h"])
    assert args.refit_every == 12 * 3600
    assert build_parser().parse_args(["run"]).refit_every is None  # off by default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--refit-every", "soon"])


async def test_a_failed_refit_keeps_the_parameters(harness: Harness) -> None:
    h = harness
    models = h.runtime.models
    assert models is not None
    assert models.refit_every_s is None  # off unless asked
    # an empty base: the fit subprocess exits 1 (too few buyers, or no predict extra)
    assert await models.refit() is None
    assert (models.refits, models.refits_failed) == (0, 1)
    assert all(p.clv is None for p in populations(h))


@pytest.mark.slow
async def test_scheduled_refit_fits_in_a_subprocess_and_reloads(harness: Harness) -> None:
    pytest.importorskip("pymc_marketing", reason="the `predict` extra is not installed")
    h = harness
    status, _ = await h.post_events(orders(80))
    assert status == 202
    await h.settle()
    await h.runtime.checkpoint()  # the fit reads the checkpointed states
    models = h.runtime.models
    assert models is not None
    models.start_refits(0.05)
    for _ in range(3000):  # the first fit may compile the model graphs (~20 s)
        if models.refits >= 2 or models.refits_failed:
            break
        await asyncio.sleep(0.05)
    assert models.refits_failed == 0
    assert models.refits >= 2  # on schedule, again and again
    body = await get_models(h)
    versions = [v["version"] for v in body["clv_versions"]]
    assert versions[:2] == [1, 2]
    clv = body["clv"]
    assert clv is not None
    assert clv["version"] >= 2
    assert clv["customers"] == 80
    assert clv["fitted_at"] == h.clock.now()  # measured at the engine's clock
    assert all(p.clv is not None and p.clv.version >= 2 for p in populations(h))
