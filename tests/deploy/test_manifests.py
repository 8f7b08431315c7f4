"""deploy/docker, deploy/k8s and deploy/grafana agree with the code: every file parses,
every command line parses with the real ``nudge`` argument parser, ports, probe paths,
environment names, image tags, rule files and dashboard wiring exist where they point."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from argparse import Namespace
from typing import Any

import pytest
import yaml

from engine import __version__
from engine.cli import build_parser
from engine.http.app import create_app
from engine.http.auth import Tokens
from engine.metrics import Metrics
from tests.deploy._support import (
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    DOCKERFILE,
    K8S,
    OPERATIONS,
    PROMETHEUS_CONFIG,
    RECIPES,
    REPO,
    dashboard,
)

IMAGE = f"nudge:{__version__}"
CODE_DIRS = ("engine", "connectors", "state", "rules")


def _code_env_names() -> set[str]:
    names: set[str] = set()
    for d in CODE_DIRS:
        for f in (REPO / d).rglob("*.py"):
            names |= set(re.findall(r"\bNUDGE_[A-Z0-9_]+\b", f.read_text(encoding="utf-8")))
    return names


def _get_routes() -> set[str]:
    app = create_app(object(), Tokens("w", "a"), Metrics())
    return {
        r.resource.canonical
        for r in app.router.routes()
        if r.method == "GET" and r.resource is not None
    }


def _parse(argv: list[str]) -> Namespace:
    """The real CLI parser: a flag the code does not know fails here (SystemExit)."""
    return build_parser().parse_args([str(a) for a in argv])


def _listen_port(args: Namespace) -> int:
    port = args.port if args.command == "run" else args.http_port
    assert port is not None, "no HTTP port: no /metrics, /healthz, /readyz to probe"
    return int(port)


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d]
    return docs


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d.get("kind") == kind]


# --------------------------------------------------------------------------- Docker


def _dockerfile() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instr = _dockerfile()
    get = lambda word: [rest for w, rest in instr if w == word]  # noqa: E731
    assert get("FROM") == ["python:3.11-slim"]
    assert any(re.search(r"pip install \"?\.(\[[a-z,]+\])?\"?", r) for r in get("RUN"))
    user = get("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(get("ENTRYPOINT")[0]) == ["nudge"]
    cmd = json.loads(get("CMD")[0])
    assert cmd == ["run", "--host", "0.0.0.0", "--data", "/data"]
    args = _parse(cmd)
    assert args.host == "0.0.0.0"
    port = _listen_port(args)
    assert port == 8080
    assert get("EXPOSE") == [str(port)]
    (healthcheck,) = get("HEALTHCHECK")
    assert f"127.0.0.1:{port}/healthz" in healthcheck
    assert "/healthz" in _get_routes()
    # the console script the ENTRYPOINT runs
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["nudge"] == "engine.cli:main"
    assert pyproject["project"]["version"] == __version__
    # every package setuptools installs is copied into the build, and re-included by the
    # Dockerfile's .dockerignore
    copied = {shlex.split(r)[0] for r in get("COPY")}
    for src in copied:
        assert (REPO / src).exists(), src
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore").read_text(encoding="utf-8")
    negated = {ln[1:].removesuffix("/**") for ln in ignore.splitlines() if ln.startswith("!")}
    assert copied <= negated


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def _nudge_services() -> dict[str, dict[str, Any]]:
    """The services running ``nudge worker`` (the consumer group's members)."""
    return {
        n: s
        for n, s in _compose()["services"].items()
        if s.get("image") == IMAGE and s["command"][0] == "worker"
    }


def test_compose_topics_step_runs_before_every_worker() -> None:
    """The one-shot ``topics`` service creates the topics with the workers' partitions
    and broker; every worker starts only once it exited 0."""
    services = _compose()["services"]
    topics = services["topics"]
    args = _parse(topics["command"])
    assert (args.command, args.topics_command) == ("topics", "ensure")
    assert topics["restart"] == "no"
    assert topics["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for name, svc in _nudge_services().items():
        w = _parse(svc["command"])
        assert (args.broker, args.partitions, args.app_id) == (w.broker, w.partitions, w.app_id)
        assert (args.replication_factor, args.events_topic) == (
            w.replication_factor,
            w.events_topic,
        )
        assert svc["depends_on"]["topics"] == {"condition": "service_completed_successfully"}, name


def test_compose_services_and_images() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "ingest"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"].startswith("redis:")
    nudge = _nudge_services()
    assert set(nudge) == {"ingest", "worker-1", "worker-2"}
    for svc in nudge.values():
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_nudge_commands_parse_and_agree() -> None:
    compose = _compose()
    kafka_partitions = int(compose["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"])
    code_env = _code_env_names()
    for name, svc in _nudge_services().items():
        args = _parse(svc["command"])
        assert args.command == "worker", name
        assert args.broker == "kafka://kafka:9092"
        assert args.redis.startswith("redis://redis:6379")
        assert args.http_host == "0.0.0.0"
        assert _listen_port(args) == 8080  # the Dockerfile's EXPOSE and HEALTHCHECK port
        assert args.partitions == kafka_partitions
        for key in svc["environment"]:
            assert key in code_env, f"{name}: {key} is not read anywhere in the code"
        for dep in ("kafka", "redis"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy"
    # every member of the consumer group gets at least one partition
    assert len(_nudge_services()) <= kafka_partitions
    published = compose["services"]["ingest"]["ports"]
    assert published == ["8080:8080"]


def test_compose_models_refit_role() -> None:
    """The CLV refit sidecar: `nudge models fit` on the workers' Kafka and Redis, on a
    schedule, from an image with the `predict` extra (not a consumer group member)."""
    compose = _compose()
    svc = compose["services"]["models-refit"]
    args = _parse(svc["command"])
    assert (args.command, args.models_command) == ("models", "fit")
    workers = [_parse(w["command"]) for w in _nudge_services().values()]
    assert {(w.broker, w.redis, w.app_id, w.redis_prefix) for w in workers} == {
        (args.broker, args.redis, args.app_id, args.redis_prefix)
    }
    assert args.every == "24h"
    assert "predict" in svc["build"]["args"]["EXTRAS"].split(",")
    assert (COMPOSE.parent / svc["build"]["context"]).resolve() == REPO
    for dep in ("kafka", "redis"):
        assert svc["depends_on"][dep]["condition"] == "service_healthy"


def test_compose_prometheus_scrapes_every_nudge_process() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = {
        t
        for job in config["scrape_configs"]
        if job["job_name"].startswith("nudge")
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    expected = {
        f"{name}:{_listen_port(_parse(svc['command']))}" for name, svc in _nudge_services().items()
    }
    assert targets == expected
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in config["scrape_configs"])
    assert "/metrics" in _get_routes()
    prometheus = _compose()["services"]["prometheus"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"])
    assert (COMPOSE.parent / "../prometheus").resolve() == PROMETHEUS_CONFIG.parent
    assert mounts["../prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_compose_grafana_provisioning() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    for src in mounts:
        assert (COMPOSE.parent / src).resolve().is_dir(), src
    provisioning = (COMPOSE.parent / "../grafana/provisioning").resolve()
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text("utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service
    providers = yaml.safe_load((provisioning / "dashboards" / "nudge.yml").read_text("utf-8"))
    path = providers["providers"][0]["options"]["path"]
    assert mounts["../grafana/dashboards"] == path
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD.name}"


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_files_parse_and_kustomization_lists_them() -> None:
    kinds = sorted(d["kind"] for d in _k8s_docs())
    assert kinds == sorted(
        [
            "ConfigMap",
            "CronJob",
            "Deployment",
            "Deployment",
            "Kustomization",
            "Namespace",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "ScaledObject",
            "Service",
            "Service",
            "ServiceMonitor",
        ]
    )
    (kustomization,) = _of_kind("Kustomization")
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for d in _k8s_docs():
        if d["kind"] not in ("Kustomization", "Namespace"):
            assert d["metadata"]["namespace"] == "nudge", d["metadata"]["name"]


def test_k8s_rules_configmap_is_the_stock_recipes() -> None:
    (cm,) = _of_kind("ConfigMap")
    recipes = {p.name: p.read_text(encoding="utf-8") for p in sorted(RECIPES.glob("*.yaml"))}
    assert cm["data"] == recipes


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


@pytest.mark.parametrize("component", ["ingest", "worker"])
def test_k8s_deployment(component: str) -> None:
    (dep,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == f"nudge-{component}"]
    template = dep["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    c = _container(dep)
    assert c["image"] == IMAGE
    args = _parse(c["args"])
    assert args.command == "worker"
    port = _listen_port(args)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": port}
    routes = _get_routes()
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    code_env = _code_env_names()
    for env in c["env"]:
        assert env["name"] in code_env
    # the seed rules are the ConfigMap's files, named one by one under its mount
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "rules"]
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "rules"]
    (cm,) = _of_kind("ConfigMap")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert args.rules == [f"{mount['mountPath']}/{name}" for name in sorted(cm["data"])]
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("component", ["ingest", "worker"])
def test_k8s_topics_init_container(component: str) -> None:
    """Each pod creates the topics before it joins the group, with its own flags."""
    (dep,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == f"nudge-{component}"]
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == IMAGE
    args = _parse(init["args"])
    assert (args.command, args.topics_command) == ("topics", "ensure")
    w = _parse(_container(dep)["args"])
    assert (args.broker, args.partitions, args.app_id, args.replication_factor) == (
        w.broker,
        w.partitions,
        w.app_id,
        w.replication_factor,
    )
    assert (args.events_topic, args.actions_topic) == (w.events_topic, w.actions_topic)
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_k8s_models_refit_cronjob() -> None:
    (job,) = _of_kind("CronJob")
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    args = _parse(c["args"])
    assert (args.command, args.models_command) == ("models", "fit")
    assert args.every is None  # the CronJob schedules it
    (worker,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "nudge-worker"]
    w = _parse(_container(worker)["args"])
    assert (args.broker, args.redis, args.app_id) == (w.broker, w.redis, w.app_id)
    assert c["image"].startswith(IMAGE)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["concurrencyPolicy"] == "Forbid"


def test_k8s_replicas_do_not_exceed_partitions() -> None:
    """Ingest pods are workers too (same consumer group): all pods, plus the rolling
    update's surge, must fit the partition count or some sit idle."""
    deployments = _of_kind("Deployment")
    partitions = {_parse(_container(d)["args"]).partitions for d in deployments}
    assert len(partitions) == 1
    total = sum(
        d["spec"]["replicas"] + d["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        for d in deployments
    )
    assert total <= partitions.pop()


def test_k8s_keda_scales_the_workers_on_their_consumer_lag() -> None:
    """The ScaledObject watches the workers' own group on their events topic and broker,
    and its maximum, with the ingest pods and the rolling surges, fits the partitions."""
    (scaled,) = _of_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
    assert target["metadata"]["name"] == "nudge-worker"
    w = _parse(_container(target)["args"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == w.broker.removeprefix("kafka://")
    assert meta["topic"] == w.events_topic
    assert meta["consumerGroup"] == w.app_id  # role all: the group is the app id
    assert w.role in ("all", "process")
    assert int(meta["lagThreshold"]) > int(meta["activationLagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false"
    low, high = scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]
    assert 1 <= low <= target["spec"]["replicas"] <= high
    others = sum(
        d["spec"]["replicas"] + d["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        for name, d in deployments.items()
        if name != "nudge-worker"
    )
    surge = target["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert high + surge + others <= w.partitions


def test_k8s_services_pdbs_and_servicemonitor_select_the_pods() -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _of_kind("Deployment")
    }

    def selects(selector: dict[str, str]) -> set[str]:
        return {name for name, labels in pods.items() if selector.items() <= labels.items()}

    services = _of_kind("Service")
    for svc in services:
        assert selects(svc["spec"]["selector"]) == {svc["metadata"]["name"]}
        (port,) = svc["spec"]["ports"]
        assert port["name"] == "http"
        assert port["targetPort"] == "http"
    for pdb in _of_kind("PodDisruptionBudget"):
        assert len(selects(pdb["spec"]["selector"]["matchLabels"])) == 1
        assert pdb["spec"]["maxUnavailable"] == 1
    assert len(_of_kind("PodDisruptionBudget")) == len(pods)
    (monitor,) = _of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    monitored = {
        s["metadata"]["name"]
        for s in services
        if selector.items() <= s["metadata"]["labels"].items()
    }
    assert monitored == {s["metadata"]["name"] for s in services}
    # job label = Service name: must match the alerts' job=~"nudge.*"
    assert all(name.startswith("nudge") for name in monitored)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "15s"}


# --------------------------------------------------------------------------- Grafana, docs


def test_dashboard_wiring() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    # panels do not overlap on the 24-column grid
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & area, p["title"]
        cells |= area


def test_docs_and_readme_point_at_the_kit() -> None:
    assert "deploy/" in (REPO / "README.md").read_text(encoding="utf-8")
    ops = OPERATIONS.read_text(encoding="utf-8")
    for sub in ("docker", "k8s", "prometheus", "grafana"):
        assert f"deploy/{sub}/" in ops
        assert (DEPLOY / sub).is_dir()
    command = "docker compose -f deploy/docker/docker-compose.yml up -d --build"
    assert command in ops
    assert command in COMPOSE.read_text(encoding="utf-8")
    for alert in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text("utf-8"))[
        "groups"
    ]:
        for rule in alert["rules"]:
            assert rule["alert"] in ops, f"docs/operations.md: no runbook for {rule['alert']}"
    for path in re.findall(r"`(deploy/[^`\s]+)`", ops):
        assert (REPO / path).exists(), path
    assert (REPO / "BENCHMARKS.md").exists()
    assert "BENCHMARKS.md" in ops
