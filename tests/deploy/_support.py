"""Shared helpers of the deploy tests: paths, metric-name extraction, promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "nudge.json"
COMPOSE = DEPLOY / "docker" / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = DEPLOY / "k8s"
OPERATIONS = REPO / "docs" / "operations.md"
RECIPES = REPO / "rules" / "recipes"

NUDGE_NAME = re.compile(r"\bnudge_[a-z0-9_]+")
# Grafana's variables, replaced before a dashboard query goes to Prometheus
GRAFANA_VARS = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_exprs(variables: dict[str, str] | None = None) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"] for v in d["templating"]["list"] if isinstance(v.get("query"), dict)
    ]
    for name, value in (variables or {}).items():
        exprs = [e.replace(name, value) for e in exprs]
    return exprs


def alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]


def promtool() -> str:
    """promtool's path, installing Prometheus (Debian package) first when it is missing,
    as tests/support/servers.py does for prometheus."""
    found = shutil.which("promtool")
    if found is None:
        subprocess.run(
            ["bash", str(DEPLOY / "scripts" / "install-prometheus.sh")],
            check=True,
            capture_output=True,
            timeout=900,
        )
        found = shutil.which("promtool")
    assert found is not None, "promtool not on PATH after deploy/scripts/install-prometheus.sh"
    return found
