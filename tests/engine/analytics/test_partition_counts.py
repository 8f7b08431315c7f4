"""A partition skips ``observe`` for outputs that change no flow and fire, convert and
feed back nothing (engine/embedded/partition.py ``_output``): its counts equal those of
one that observes every output, on a storefront trace with the recipes."""

from __future__ import annotations

import orjson

from engine.analytics.observe import observe
from engine.embedded.partition import Partition, _snap
from engine.events import decode_event
from engine.output import Output
from engine.shard import Shard
from load_tests.traffic import TrafficConfig, generate
from rules.ruleset import RECIPES_DIR, load_ruleset


class _ObserveAll(Partition):
    """The reference: every output of a customer is observed."""

    def _output(self, out: Output) -> None:
        cid = out.customer_id
        if self.tally is not None and cid:
            noted = self._pre
            pre = _snap(noted[1]) if noted is not None and noted[0] == cid else None
            event = self._event if out.timer_due is None else None
            if event is not None and event.customer_id != cid:
                event = None
            counts = self.tally.counts(cid)
            rs = self.driver.processor.ruleset
            observe(rs, pre, self.store.get(cid), out, event, self.clock.now(), counts)
            self.tally.drop_empty(cid)
        Shard._output(self, out)


def test_skipped_outputs_count_nothing() -> None:
    cfg = TrafficConfig(events=6000, customers=300, days=7.0)
    events = [decode_event(orjson.dumps(e)) for e in generate(cfg)]
    rs = load_ruleset([str(RECIPES_DIR)])
    fast = Partition(0, rs, lambda out: None, analytics=True)
    ref = _ObserveAll(0, rs, lambda out: None, analytics=True)
    for seq, ev in enumerate(events, 1):
        fast.apply(seq, ev.ts, ev)
        ref.apply(seq, ev.ts, ev)
    end = events[-1].ts + 30 * 86_400_000
    fast.fire_until(end)
    ref.fire_until(end)
    assert fast.tally is not None
    assert ref.tally is not None
    want = ref.tally.totals()
    assert sum(want.values()) > 1000  # the trace enters, sends, exits and converts
    assert {m for (_, _, _, _, m, _) in want} >= {"entered", "reached", "completed"}
    assert fast.tally.totals() == want
