"""deploy/prometheus: promtool accepts the config and the rules, the alert expressions fire
when they should (promtool unit tests), and every alert documents itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy._support import ALERTS, PROMETHEUS_CONFIG, alert_rules, promtool

UNIT_TESTS = Path(__file__).with_name("alerts_unit_test.yml")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_promtool_check_config() -> None:
    proc = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is valid prometheus config file syntax" in proc.stdout


def test_alert_expressions_fire_as_intended(tmp_path: Path) -> None:
    """``promtool test rules`` over alerts.yml (annotations dropped: promtool compares them
    verbatim, the unit tests are about expressions, ``for`` durations and labels)."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    tests = tmp_path / UNIT_TESTS.name
    tests.write_text(UNIT_TESTS.read_text(encoding="utf-8"), encoding="utf-8")
    proc = _promtool("test", "rules", str(tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in alert_rules()} <= tested


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: str(r["alert"]))
def test_alert_has_summary_description_and_inline_runbook(rule: dict[str, object]) -> None:
    annotations = rule["annotations"]
    assert isinstance(annotations, dict)
    for key in ("summary", "description", "runbook"):
        assert str(annotations.get(key, "")).strip(), f"{rule['alert']}: no {key}"
    runbook = str(annotations["runbook"])
    assert "://" not in runbook, "runbooks are inline text, not links"
    assert len(runbook.splitlines()) >= 2
    labels = rule["labels"]
    assert isinstance(labels, dict)
    assert labels["severity"] in {"critical", "warning", "info"}
    assert str(rule["alert"]).startswith("Nudge")


def test_alerts_select_nudge_jobs_and_scrape_config_names_them_so() -> None:
    """Alerts select job=~"nudge.*"; every non-Prometheus job of prometheus.yml matches."""
    for rule in alert_rules():
        assert 'job=~"nudge.*"' in str(rule["expr"]), rule["alert"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    assert "prometheus" in jobs
    assert all(j.startswith("nudge") for j in jobs if j != "prometheus")
    assert config["rule_files"] == ["alerts.yml"]
