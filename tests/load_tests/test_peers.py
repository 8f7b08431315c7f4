"""load_tests.peers.compare on a tiny trace against the session Kafka broker."""

from __future__ import annotations

import json

import pytest

from load_tests.peers.compare import PEERS, main
from tests.support.servers import KafkaServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

EVENTS = 2000


def test_compare_tiny_trace(kafka_server: KafkaServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                *("--events", str(EVENTS), "--broker", kafka_server.bootstrap),
                *("--timeout", "120", "--nudge-worker"),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["trace"]["events"] == EVENTS
    ref = result["nudge_backtest"]
    assert ref["emails"] > 0
    assert ref["emails_due_by_last_event"] <= ref["emails"]
    for name in PEERS:
        peer = result[name]
        assert peer["processed"] == EVENTS, (name, peer)
        assert peer["events_per_second"] > 0
        assert peer["exit_code"] == 0, (name, peer)
        assert isinstance(peer["emails"], int), (name, peer)
        assert peer["emails"] >= 0
    worker = result["nudge_worker"]  # the same topic, through nudge worker
    assert worker["processed"] == EVENTS, worker
    assert worker["events_per_second"] > 0
