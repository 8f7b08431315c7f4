"""customer.rfm and customer.predicted in the pure core (issue 16): computed against the
Population the processor holds, only when an expression selects them, null without one;
in rule conditions, step params and segment conditions."""

from __future__ import annotations

from typing import Any

import pytest

from engine.intelligence.clv import CLVParams, predict
from engine.intelligence.population import EMPTY, Population
from engine.intelligence.rfm import RfmBuilder, score
from engine.profile import customer_view
from engine.scope import RuleScope
from engine.testing import RuleKit
from rules.expressions import Expression

DAY = 86_400_000
SETTINGS = "kind: settings\ndefault_consent: {email: true, sms: true, webhook: true}\n"
CHAMPIONS = """
id: thank-champions
trigger: {event: page_viewed}
when: "customer.rfm.group == 'champions'"
reentry: always
steps:
  - send: {channel: webhook, template: thanks, params: {p: "{{ customer.predicted }}"}}
"""
GUARDED = """
id: guarded
trigger: {event: page_viewed}
when: "customer.predicted == null || customer.predicted.p_alive < 0.5"
reentry: always
steps:
  - send: {channel: webhook, template: hi}
"""
SEGMENT = """
kind: segment
id: rfm-champions
condition: "customer.rfm != null && customer.rfm.group == 'champions'"
---
id: welcome-champion
trigger: {segment_entered: rfm-champions}
steps:
  - send: {channel: webhook, template: welcome_champion}
"""
PARAMS = CLVParams(
    r=0.6,
    alpha=45.0,
    a=0.9,
    b=3.2,
    p=5.0,
    q=4.0,
    v=36.0,
    fitted_at=0,
    version=1,
    customers=10,
)


def base(k: RuleKit, n: int = 10) -> None:
    """Customers c0..c{n-1}: ci placed i + 1 orders of 50 over the last days, so c9 is
    the most frequent and biggest spender, every one recent."""
    for i in range(n):
        for j in range(i + 1):
            k.send("order_completed", f"c{i}", {"order_id": f"o{i}-{j}", "total": 50.0})
    k.advance(days=1)


def population(k: RuleKit, clv: CLVParams | None = PARAMS) -> Population:
    builder = RfmBuilder()
    for st in k.driver.store:
        builder.add(st, k.now)
    return Population(builder.build(k.now), clv)


def test_a_rule_on_the_rfm_group_fires_for_the_champion_only() -> None:
    k = RuleKit.from_yaml(SETTINGS, CHAMPIONS)
    base(k)
    pop = population(k)
    k.driver.processor.population = pop
    assert score(pop.rfm, k.state("c9"), k.now).group == "champions"  # type: ignore[arg-type,union-attr]
    assert score(pop.rfm, k.state("c0"), k.now).group != "champions"  # type: ignore[arg-type,union-attr]
    for i in range(10):
        k.send("page_viewed", f"c{i}")
    fired = k.sent("thank-champions")
    champions = {
        f"c{i}"
        for i in range(10)
        if (r := score(pop.rfm, k.state(f"c{i}"), k.now)) and r.group == "champions"  # type: ignore[arg-type]
    }
    assert {a.customer_id for a in fired} == champions
    assert "c9" in champions
    assert "c0" not in champions
    # the step reads customer.predicted: the whole map, as clv.predict gives it
    [c9] = [a for a in fired if a.customer_id == "c9"]
    expected = predict(PARAMS, k.state("c9"), k.now)
    assert expected is not None
    assert c9.params["p"] == pytest.approx(expected.to_dict())


def test_predicted_p_alive_equals_clv_predict() -> None:
    k = RuleKit.from_yaml(SETTINGS)
    base(k)
    pop = population(k)
    for i in (0, 4, 9):
        st = k.state(f"c{i}")
        scope = RuleScope(st, k.now, {}, population=pop)
        expected = predict(PARAMS, st, k.now)
        assert expected is not None
        for name, value in expected.to_dict().items():
            assert Expression(f"customer.predicted.{name}").evaluate(scope) == value
        got = Expression("customer.predicted != null && customer.predicted.p_alive <= 1.0")
        assert got.evaluate(scope) is True
        assert Expression("customer.rfm.score").evaluate(scope) == score(pop.rfm, st, k.now).score  # type: ignore[arg-type,union-attr]


def test_without_a_model_both_are_null_and_a_guarded_rule_does_not_error() -> None:
    k = RuleKit.from_yaml(SETTINGS, GUARDED, CHAMPIONS)
    base(k, 3)
    assert k.driver.processor.population is EMPTY
    scope = RuleScope(k.state("c2"), k.now, {})
    assert Expression("customer.rfm == null && customer.predicted == null").evaluate(scope)
    out = k.send("page_viewed", "c2")
    assert [a.template for a in k.sent("guarded")] == ["hi"]
    # an unguarded read of a null field is a CEL error: counted, the rule does not fire
    assert k.sent("thank-champions") == []
    [err] = out.errors
    assert "customer.rfm.group" in err
    # boundaries but no fitted model: rfm is there, predicted stays null
    k.driver.processor.population = population(k, clv=None)
    scope = RuleScope(k.state("c2"), k.now, {}, population=k.driver.processor.population)
    assert Expression("customer.rfm != null && customer.predicted == null").evaluate(scope)
    # a customer without orders has neither, whatever the population
    k.driver.processor.population = population(k)
    k.send("page_viewed", "nobody")
    scope = RuleScope(k.state("nobody"), k.now, {}, population=k.driver.processor.population)
    assert Expression("customer.rfm == null && customer.predicted == null").evaluate(scope)


def test_a_segment_condition_on_customer_rfm() -> None:
    k = RuleKit.from_yaml(SETTINGS, SEGMENT)
    base(k)
    assert k.state("c9").segments is None  # no boundaries yet: rfm null, not a member
    proc = k.driver.processor
    pop = proc.population = population(k)
    k.send("page_viewed", "c9")  # not an order: cannot move a condition on customer.rfm
    assert "rfm-champions" not in (k.state("c9").segments or {})
    # what a runtime does with a new population: the digest moves, the backfill
    # re-evaluates everyone (engine/embedded/runtime.py population_changed)
    rs = proc.ruleset
    assert rs.use_population(pop.key(rs.segments_population))
    for cid in ("c9", "c0"):
        k.driver._emit(proc.backfill_segments(cid, k.now))
    assert "rfm-champions" in (k.state("c9").segments or {})
    assert "rfm-champions" not in (k.state("c0").segments or {})
    assert [a.customer_id for a in k.sent("welcome-champion")] == ["c9"]


def test_the_population_survives_a_deploy() -> None:
    k = RuleKit.from_yaml(SETTINGS, CHAMPIONS)
    base(k)
    pop = population(k)
    proc = k.driver.processor
    proc.population = pop
    proc.ruleset = proc.ruleset  # a deploy builds a new flow runner
    k.send("page_viewed", "c9")
    [sent] = k.sent("thank-champions")
    assert sent.params["p"] is not None


class _Boom:
    def rfm_of(self, *_: Any) -> Any:
        raise AssertionError("rfm computed though not selected")

    predicted_of = rfm_of


def test_a_rule_not_reading_them_pays_nothing() -> None:
    k = RuleKit.from_yaml(SETTINGS)
    base(k, 1)
    st = k.state("c0")
    boom: Any = _Boom()
    view = customer_view(st, {}, frozenset({"orders", "ltv"}), k.now, boom)
    assert view == {"orders": 1, "ltv": 50.0}
    scope = RuleScope(st, k.now, {}, population=boom)
    assert Expression("customer.orders >= 1 && customer.ltv > 10.0").evaluate(scope) is True
    with pytest.raises(AssertionError):
        Expression("customer.rfm == null").evaluate(scope)
