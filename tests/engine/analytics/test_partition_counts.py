"""A partition's campaign counts (from the core's flow notes, engine/analytics/observe.py)
balance against what the core itself reported on a storefront trace with the recipes:
every entry is completed, exited or still open at the end; the sends, holdouts and
suppressions per rule and arm equal the fires; and counting changes no action."""

from __future__ import annotations

from collections import Counter

import orjson

from engine.events import decode_event
from engine.output import Output
from engine.partition import Partition
from load_tests.traffic import TrafficConfig, generate
from rules.ruleset import RECIPES_DIR, load_ruleset


def test_counts_balance_against_the_core() -> None:
    cfg = TrafficConfig(events=6000, customers=300, days=7.0, unsubscribe_share=0.05)
    events = [decode_event(orjson.dumps(e)) for e in generate(cfg)]
    rs = load_ruleset([str(RECIPES_DIR)])
    fires: Counter[tuple[str, str, str]] = Counter()
    keys_on: list[str] = []
    keys_off: list[str] = []

    def on(out: Output) -> None:
        keys_on.extend(a.idempotency_key for a in out.actions)
        for f in out.fires:
            fires[(f.rule_id, f.variant, f.outcome)] += 1

    part = Partition(0, rs, on, analytics=True)
    plain = Partition(0, rs, lambda out: keys_off.extend(a.idempotency_key for a in out.actions))
    for seq, ev in enumerate(events, 1):
        part.apply(seq, ev.ts, ev)
        plain.apply(seq, ev.ts, ev)
    end = events[-1].ts + 3 * 86_400_000  # some flows stay open (win-back waits 60 days)
    part.fire_until(end)
    plain.fire_until(end)
    assert keys_on == keys_off  # counting does not change what the core does

    assert part.tally is not None
    totals = part.tally.totals()
    by: Counter[tuple[str, str, str]] = Counter()
    for (rid, _version, variant, _pc, metric, _hour), n in totals.items():
        by[(rid, variant, metric.split(":")[0])] += n
    open_flows: Counter[tuple[str, str]] = Counter()
    for st in part.store:
        for inst in (st.flows or {}).values():
            open_flows[(inst.rule_id, inst.variant)] += 1
    arms = {(r, v) for r, v, _ in by} | set(open_flows)
    assert len({r for r, _ in arms}) >= 5
    for rid, variant in arms:
        entered = by[(rid, variant, "entered")]
        left = by[(rid, variant, "completed")] + by[(rid, variant, "exited")]
        assert entered == left + open_flows[(rid, variant)], (rid, variant)
        assert by[(rid, variant, "sent")] == fires[(rid, variant, "sent")]
        assert by[(rid, variant, "holdout")] == fires[(rid, variant, "holdout")]
        suppressed = sum(
            n
            for (r, v, o), n in fires.items()
            if r == rid and v == variant and o.startswith("supp")
        )
        assert by[(rid, variant, "suppressed")] == suppressed
    assert sum(by[k] for k in by if k[2] == "exited") > 0
    assert sum(by[k] for k in by if k[2] == "reached") > sum(fires.values())  # waits too
