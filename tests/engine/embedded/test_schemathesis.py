"""The HTTP API of a real `nudge run` against its own OpenAPI document, with schemathesis.

Cases generated from ``/openapi.json`` (valid and invalid: bodies, path parameters) are
sent with the write token and with the admin token; every response must be no 5xx, with
a status code, content type and body the document lists for that operation. Hypothesis
runs derandomized without an example database, so a run draws the same cases every time.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from load_tests.nudge_proc import start_nudge_run, wait_ready
from tests.engine.embedded.test_crash import free_port

pytestmark = pytest.mark.slow

TOKENS = ("test-write-token", "test-admin-token")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 200  # per (token, mode), spread over the 9 operations: 800 requests, ~13 s


def _fuzz(
    schema: schemathesis.BaseSchema, headers: dict[str, str], mode: schemathesis.GenerationMode
) -> None:
    @given(case=schema.as_strategy(mode, headers=headers))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    call()


def test_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    sinks = tmp_path / "sinks.json"
    sinks.write_bytes(
        orjson.dumps(
            {
                "default": "file",
                "sinks": {"file": {"type": "jsonl", "path": str(tmp_path / "actions.jsonl")}},
            }
        )
    )
    port, log = free_port(), tmp_path / "engine.log"
    proc = start_nudge_run(tmp_path / "data", port, sinks, tokens=TOKENS, log=log)
    try:
        wait_ready(port, proc, log, 60.0)
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
        for token in TOKENS:
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):
                _fuzz(schema, {"Authorization": f"Bearer {token}"}, mode)
        assert proc.poll() is None, "nudge run exited: " + log.read_text()[-2000:]
        assert "unhandled error" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
