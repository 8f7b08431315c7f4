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


def test_replenishment_reminder_before_the_predicted_date() -> None:
    """A frequent buyer (an order every 2 days): as the orders add up the model expects
    the next one sooner; at the 8th (6.5 days ahead) the customer enters replenishment-due
    and gets the reminder with the days left, once in 30 days however many follow."""
    k = kit(Population(None, PARAMS))
    for n in range(7):
        order(k, "c1", n, 25.0)
        k.advance(days=2)
    assert k.sent("replenishment-reminder") == []  # 7.4 days ahead after the 7th
    for n in range(7, 12):
        order(k, "c1", n, 25.0)
        k.advance(days=2)
    [mail] = k.sent("replenishment-reminder")
    assert mail.template == "replenishment_reminder"
    assert 0.0 <= mail.params["due_in_days"] <= 7.0
    st = k.state("c1")
    assert "replenishment-due" in (st.segments or {})
    assert len(k.sent("replenishment-reminder")) == 1  # 1/30d


def test_rfm_group_segments_follow_the_groups() -> None:
    """The stock rfm-<group> segments: every buyer in exactly the segment of its group,
    against boundaries computed from the base."""
    from engine.intelligence.rfm import RfmBuilder

    k = kit()
    for i in range(20):
        for n in range(i % 5 + 1):
            order(k, f"c{i}", n, 20.0 * (i + 1))
        k.advance(days=i)
    builder = RfmBuilder()
    for st in k.driver.store:
        builder.add(st, k.now)
    pop = Population(builder.build(k.now), None)
    k.driver.processor.population = pop
    for i in range(20):  # an order: the RFM segments are evaluated against ``pop``
        k.send("order_completed", f"c{i}", {"order_id": f"last-{i}", "total": 1.0})
    groups = RULES.segment_ids
    for i in range(20):
        st = k.state(f"c{i}")
        rfm = pop.rfm_of(st, k.now)
        assert rfm is not None
        mine = {s for s in (st.segments or {}) if s.startswith("rfm-")}
        assert mine == {"rfm-" + rfm["group"].replace("_", "-")}
        assert mine <= groups
