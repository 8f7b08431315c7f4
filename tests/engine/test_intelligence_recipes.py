"""The recipes on segments and predictions (rules/intelligence/) under the virtual clock:
VIP welcome on entering the VIP segment; a churn-risk win-back when the fitted model says
a repeat customer is probably gone (found with no event, by the segment timer); nothing
from churn-risk without a model."""

from __future__ import annotations

from engine.intelligence.clv import CLVParams
from engine.intelligence.population import Population
from engine.testing import RuleKit
from rules.ruleset import load_ruleset

RULES = load_ruleset(["rules/recipes", "rules/segments", "rules/intelligence"])
PARAMS = CLVParams(
    r=0.6, alpha=45.0, a=0.9, b=3.2, p=5.0, q=4.0, v=36.0, fitted_at=0, version=1, customers=10
)


def kit(population: Population | None = None) -> RuleKit:
    k = RuleKit(RULES)
    if population is not None:
        k.driver.processor.population = population
    return k


def order(k: RuleKit, cid: str, n: int, total: float) -> None:
    k.send("order_completed", cid, {"order_id": f"{cid}-{n}", "total": total})


def test_entering_vip_sends_the_welcome_once() -> None:
    k = kit()
    order(k, "c1", 1, 300.0)
    assert k.sent("vip-welcome") == []
    order(k, "c1", 2, 300.0)  # ltv 600: enters vip
    [mail] = k.sent("vip-welcome")
    assert (mail.template, mail.params["ltv"]) == ("vip_welcome", 600.0)
    k.send("order_refunded", "c1", {"order_id": "c1-2", "amount": 300.0})  # leaves vip
    order(k, "c1", 3, 300.0)  # enters again: reentry once
    assert len(k.sent("vip-welcome")) == 1


def test_a_lapsing_repeat_customer_gets_the_winback() -> None:
    k = kit(Population(None, PARAMS))
    order(k, "c1", 1, 80.0)
    k.advance(days=10)
    order(k, "c1", 2, 80.0)
    k.advance(days=5)
    k.send("page_viewed", "c1")
    assert k.sent("churn-winback") == []  # just ordered: alive
    # no event for 10 months: the segment timer (the orders' day buckets leaving the
    # 90-day window) re-evaluates every segment, churn-risk with the model included
    k.advance(days=300)
    first, reminder = k.sent("churn-winback")
    assert (first.template, reminder.template) == ("winback_vip", "winback_vip_reminder")
    assert first.params["p_alive"] < 0.5
    assert reminder.fire_at - first.fire_at == 7 * 86_400_000


def test_without_a_model_churn_risk_stays_empty() -> None:
    k = kit()
    order(k, "c1", 1, 80.0)
    k.advance(days=10)
    order(k, "c1", 2, 80.0)
    k.advance(days=300)
    k.send("page_viewed", "c1")
    assert k.sent("churn-winback") == []
    assert "churn-risk" not in (k.state("c1").segments or {})
