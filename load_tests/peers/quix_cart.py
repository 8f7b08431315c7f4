"""Abandoned cart as a quixstreams app, the way its docs recommend: ``Application``,
``sdf = app.dataframe(topic)``, a stateful ``sdf.apply(fn, stateful=True)`` whose ``fn``
gets the per-key :class:`quixstreams.State`, and ``sdf.to_topic(...)`` for the actions.

    python -m load_tests.peers.quix_cart BOOTSTRAP TOPIC APP_ID EXPECTED RESULT_FILE STATE_DIR

Consumes ``EXPECTED`` events (keyed by customer id), produces actions to
``<APP_ID>-actions``, writes ``{"processed", "seconds", "events_per_second", "emails",
"sms", ...}`` to RESULT_FILE and stops (``app.stop()`` from inside the callback).

Where quixstreams cannot express the rule as specified (quixstreams 3.28.1):

* **No timers of any kind.** There is no scheduled / punctuation callback API: the
  ``Application`` and ``StreamingDataFrame`` expose no timer, ``schedule`` or
  ``punctuate`` method (checked: ``grep -n "schedule\\|punctuat" quixstreams/app.py``
  only hits the ``commit_interval`` docstring), and a stateful function runs only when a
  message for its key is processed.
* **State is key-scoped.** ``State`` offers ``get``/``set``/``delete``/``exists`` (and
  ``ttl``) for the *current message's key* only; a callback cannot read or write another
  customer's state, so it cannot even sweep other customers' due timers the way the faust
  peer does from inside its agent.
* So a customer's 4h wait is checked **only when that customer's next event arrives**
  (the step then runs at its due time, as in the engine, if that is ≤ the partition's
  stream time). A cart abandoned for good — no later event from that customer — never
  gets its email: this is the rule's main case, so the email count is far below the
  engine's. The SMS step likewise needs yet another event from the same customer.
* Event-time windows are the one event-time mechanism: ``sdf.session_window(timeout_ms=
  4h)`` closes on the partition's stream time and could emit "no cart event for 4h", but
  a window is an aggregation, not a flow: it cannot carry the exits (``order_completed``,
  emptied cart — another event type, the same key), the restart, or the second,
  conditional step, without a second stateful stage joined back on key; not attempted.
* ``now`` (lateness, timer due checks) is the partition's stream time kept in process
  memory (``message_context().partition``); the engine's clock is global.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from quixstreams import Application, State, message_context

from load_tests.peers.cart_rule import due, on_event, ts_ms


def build(
    bootstrap: str, topic: str, app_id: str, expected: int, result_file: str, state_dir: str
) -> Application:
    app = Application(
        broker_address=bootstrap,
        consumer_group=app_id,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    source = app.topic(topic, key_deserializer="str", value_deserializer="json")
    actions = app.topic(f"{app_id}-actions", key_serializer="str", value_serializer="json")
    stream_time: dict[int, int] = {}
    stats: dict[str, Any] = {"processed": 0, "duplicates": 0, "emails": 0, "sms": 0}
    open_flows: set[str] = set()
    t_first: list[float] = []

    def abandoned_cart(ev: dict[str, Any], state: State[str, Any]) -> list[dict[str, Any]]:
        if not t_first:
            t_first.append(time.monotonic())
        part = message_context().partition
        now = max(stream_time.get(part, 0), ts_ms(ev["timestamp"]))
        stream_time[part] = now
        st: dict[str, Any] = state.get("customer") or {}
        dup, out = on_event(st, ev, now)
        state.set("customer", st)
        (open_flows.add if due(st) is not None else open_flows.discard)(ev["customer_id"])
        stats["duplicates"] += dup
        for a in out:
            stats["emails" if a["channel"] == "email" else "sms"] += 1
        stats["processed"] += 1
        if stats["processed"] == expected:
            secs = time.monotonic() - t_first[0]
            stats["seconds"] = round(secs, 3)
            stats["events_per_second"] = round(expected / max(secs, 1e-9))
            stats["open_flows"] = len(open_flows)
            with open(result_file, "w") as fh:
                json.dump(stats, fh)
            app.stop()
        return out

    sdf = app.dataframe(source)
    sdf = sdf.apply(abandoned_cart, stateful=True, expand=True)
    sdf.to_topic(actions, key=lambda a: str(a["customer_id"]))
    return app


def main(argv: list[str]) -> None:
    bootstrap, topic, app_id, expected, result_file, state_dir = argv
    app = build(bootstrap, topic, app_id, int(expected), result_file, state_dir)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1:])
