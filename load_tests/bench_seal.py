"""Benchmark: what sealing at rest costs per stored body, whole bodies vs fields.

The two ways engine/embedded/storage/crypt.py could encrypt personal data, timed on the
bodies the embedded runtime stores: a journal request (a JSON array of events, each with
an email and a phone in its attributes) and a customer state (packed MessagePack).

- ``whole``: one AES-GCM seal of the body as it is (what the runtime does);
- ``fields``: the body decoded, each personal attribute value sealed on its own, the body
  encoded again (what field-level encryption would have to do; the rest stays readable).

Prints microseconds per body for seal and open, plaintext as the baseline (0), and the
bytes added.

    python -m load_tests.bench_seal --events 100 --rounds 2000
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from engine.embedded.storage.crypt import Sealer, generate_key
from state.customer import CustomerState, pack, unpack

__all__ = ["main"]

PERSONAL = ("email", "phone")


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"e{i}",
            "type": "customer_signed_up" if i % 10 == 0 else "product_viewed",
            "customer_id": f"c{i}",
            "timestamp": "2026-12-04T12:00:00.000Z",
            "properties": {
                "attributes": {"email": f"person{i}@example.com", "phone": f"+1555{i:07d}"},
                "product_id": f"p{i % 50}",
                "price": 19.9,
            },
        }
        for i in range(n)
    ]


def _time(fn: Callable[[], Any], rounds: int) -> float:
    """Microseconds per call, best of three runs of ``rounds`` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / rounds * 1e6


def run(events: int, rounds: int) -> dict[str, Any]:
    sealer = Sealer([base64.b64decode(generate_key())])
    seal, open_ = sealer.seal, sealer.open
    body = orjson.dumps(_events(events))
    attrs = {"email": "person@example.com", "phone": "+15550000001", "first_name": "Ada"}
    viewed = [f"p{i}" for i in range(20)]
    state = pack(CustomerState("c1", 1, 2, attributes=attrs, orders=3, viewed=viewed))

    def seal_fields_journal() -> bytes:
        evs = orjson.loads(body)
        for ev in evs:
            attrs = ev["properties"]["attributes"]
            for k in PERSONAL:
                attrs[k] = seal(attrs[k].encode()).hex()
        return orjson.dumps(evs)

    sealed_fields = seal_fields_journal()

    def open_fields_journal() -> bytes:
        evs = orjson.loads(sealed_fields)
        for ev in evs:
            attrs = ev["properties"]["attributes"]
            for k in PERSONAL:
                attrs[k] = open_(bytes.fromhex(attrs[k])).decode()
        return orjson.dumps(evs)

    def seal_fields_state() -> bytes:
        st = unpack(state)
        attrs = dict(st.attributes or {})
        for k in PERSONAL:
            attrs[k] = seal(attrs[k].encode()).hex()
        st.attributes = attrs
        return pack(st)

    whole_body, whole_state = seal(body), seal(state)
    return {
        "journal_request": {
            "events": events,
            "plain_bytes": len(body),
            "whole_seal_us": round(_time(lambda: seal(body), rounds), 2),
            "whole_open_us": round(_time(lambda: open_(whole_body), rounds), 2),
            "whole_bytes_added": len(whole_body) - len(body),
            "fields_seal_us": round(_time(seal_fields_journal, rounds), 2),
            "fields_open_us": round(_time(open_fields_journal, rounds), 2),
            "fields_bytes_added": len(sealed_fields) - len(body),
        },
        "customer_state": {
            "plain_bytes": len(state),
            "whole_seal_us": round(_time(lambda: seal(state), rounds * 10), 2),
            "whole_open_us": round(_time(lambda: open_(whole_state), rounds * 10), 2),
            "whole_bytes_added": len(whole_state) - len(state),
            "fields_seal_us": round(_time(seal_fields_state, rounds * 10), 2),
            "fields_bytes_added": len(seal_fields_state()) - len(state),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=100, help="events per journal request")
    p.add_argument("--rounds", type=int, default=2000)
    args = p.parse_args(argv)
    out = run(args.events, args.rounds)
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
