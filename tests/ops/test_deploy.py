"""deploy/ works as shipped: the compose file names only files that exist, orders `migrate` before vlwatch's
services and passes `docker compose config`; the Kubernetes manifests validate against the Kubernetes schemas
(kubernetes-validate) and hold together (probes, volumes, secrets, KEDA triggers on the workers' queues); the
Grafana dashboard asks only for metrics vlwatch exposes; the shipped YAML configs are valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.config import parse_config
from tests.pipeline.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "vlwatch.yaml").read_text()) if d]


def vlwatch_services(spec: dict) -> dict[str, dict]:
    return {n: s for n, s in spec["services"].items() if str(s.get("image", "")).startswith("vlwatch")}


def test_compose_names_only_files_it_has_and_runs_migrate_first() -> None:
    spec = compose()
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which deploy/ does not have"
        build = service.get("build")
        if build:
            dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
            stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile.read_text(), re.M)
            assert build["target"] in stages, (name, stages)
    ours = vlwatch_services(spec)
    assert {"api", "listener", "worker-cpu", "worker-gpu", "dispatcher", "scanner", "migrate"} <= set(ours)
    assert spec["services"]["migrate"]["restart"] == "no"
    for name, service in ours.items():
        if name != "migrate":
            assert service["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}, name
    assert all(spec["services"]["migrate"]["depends_on"][s]["condition"] == "service_healthy"
               for s in ("postgres", "redis", "s3"))
    for name in ("api", "listener", "postgres", "redis", "s3", "worker-cpu", "worker-gpu", "dispatcher"):
        assert spec["services"][name].get("healthcheck"), name
    gpu = spec["services"]["worker-gpu"]
    assert gpu["build"]["target"] == "gpu" and gpu["image"] == "vlwatch-gpu:latest"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--pool" in gpu["command"] and "solo" in gpu["command"]
    ports = {t for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
             for c in job["static_configs"] for t in c["targets"]}
    assert ports == {"api:8080", "listener:8471", "worker-cpu:9102", "worker-gpu:9102", "dispatcher:9103"}


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose`, where the docker CLI exists; installed with apt-get
    (Debian's docker-compose) when only the docker CLI is there and this runs as root."""
    if not shutil.which("docker"):
        return None
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if not shutil.which("docker-compose"):
        from tests import stack

        try:
            stack._ensure_binary("docker-compose", "docker-compose")
        except stack.StackError:
            return None
    return ["docker-compose"]


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker CLI with compose on this machine (docker compose / docker-compose): "
                    "the file's own checks above still ran")
    proc = subprocess.run([*cli, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    import kubernetes_validate

    docs = k8s_docs()
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked against its use below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Secret", "vlwatch-env"), ("ConfigMap", "vlwatch-config"), ("PersistentVolumeClaim", "vlwatch-models"),
            ("Job", "vlwatch-migrate"), ("Deployment", "vlwatch-worker-gpu")} <= kinds
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does catch a broken manifest
        broken = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment")))
        broken["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "eighty"}]
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _pods() -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in k8s_docs()
            if d["kind"] in ("Deployment", "Job")}


def test_kubernetes_manifests_hold_together() -> None:
    docs = k8s_docs()
    defined = {(d["kind"], d["metadata"]["name"]) for d in docs}
    secret = next(d for d in docs if d["kind"] == "Secret")
    for name, pod in _pods().items():
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                assert ("Secret", src["secretRef"]["name"]) in defined, name
        for v in pod.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in defined, name
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in defined, name
    pods = _pods()
    for name, port in (("vlwatch-api", 8080), ("vlwatch-listener", 8471)):
        (c,) = pods[name]["containers"]
        assert str(port) in c["args"] and "0.0.0.0" in c["args"]
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/healthz" and named[c[probe]["httpGet"]["port"]] == port
    (gpu,) = pods["vlwatch-worker-gpu"]["containers"]
    assert gpu["image"] == "vlwatch-gpu:latest" and gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        assert ("Deployment", target) in defined
        (worker,) = pods[target]["containers"]
        queues = worker["args"][worker["args"].index("--queues") + 1].split(",")
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis" and meta["listName"] in queues
        assert all(isinstance(v, str) for v in meta.values())  # KEDA trigger metadata is string -> string
        assert int(meta["listLength"]) > 0 and meta["addressFromEnv"] in secret["stringData"]
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]


def test_shipped_configs_are_valid() -> None:
    parse_config((DEPLOY / "vlwatch.yaml").read_text(), "deploy/vlwatch.yaml")
    configmap = next(d for d in k8s_docs() if d["kind"] == "ConfigMap")
    cfg = parse_config(configmap["data"]["vlwatch.yaml"], "ConfigMap vlwatch-config")
    assert cfg.sources["dock-cam"].timezone == "Europe/Berlin"


def test_grafana_dashboard_asks_for_metrics_vlwatch_exposes() -> None:
    source = (ROOT / "services" / "metrics.py").read_text()
    exposed = set(re.findall(r'GaugeMetricFamily\("(vlwatch_\w+)"', source))
    exposed |= {f"{n}_total" for n in re.findall(r'Counter\("(vlwatch_\w+?)(?:_total)?"', source)}
    exposed |= {f"{n}_{s}" for n in re.findall(r'Histogram\("(vlwatch_\w+)"', source) for s in ("bucket", "sum", "count")}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "vlwatch.json").read_text())
    asked = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"vlwatch_\w+", t["expr"])}
    assert asked and asked <= exposed, asked - exposed
    assert {"vlwatch_jobs", "vlwatch_queue_depth", "vlwatch_stage_seconds_bucket", "vlwatch_job_failures_total",
            "vlwatch_deliveries", "vlwatch_delivery_lag_seconds", "vlwatch_images_registered_total"} <= asked
