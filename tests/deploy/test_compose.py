"""docker-compose.yml, checked with Debian's docker-compose (v1.29; `config` needs no engine),
and the Prometheus and Grafana files it mounts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, tool

COMPOSE = REPO / "docker-compose.yml"
SECRETS = {
    "STARRATING_ADMIN_TOKEN": "admin-token-from-env",
    "STARRATING_POSTGRES_PASSWORD": "pg-password-from-env",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password-from-env",
}
EXPECTED_SERVICES = {"torchserve", "gateway", "postgres", "prometheus", "grafana"}


def compose(
    *args: str, env_file: Path, secrets: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # A clean environment and an explicit env file: a developer's own .env or exported
    # variables must not make a missing secret look present.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **secrets}
    return subprocess.run(
        [tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def port(entry: str) -> dict[str, str]:
    """A published port as `docker-compose config` (v1) prints it: ``IP:HOST:TARGET/PROTO``."""
    address, _, protocol = entry.partition("/")
    host_ip, host_port, target = address.rsplit(":", 2)
    return {"host_ip": host_ip, "published": host_port, "target": target, "protocol": protocol}


def volume(entry: str) -> dict[str, str]:
    """A volume as `docker-compose config` (v1) prints it: ``SOURCE:TARGET:MODE``."""
    source, target, mode = entry.split(":")
    return {"source": source, "target": target, "mode": mode}


def volumes(service: dict[str, Any]) -> list[dict[str, str]]:
    return [volume(v) for v in service.get("volumes", [])]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    result = compose("config", env_file=env_file, secrets=SECRETS)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def test_config_validates_quietly(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    result = compose("config", "-q", env_file=env_file, secrets=SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_config_refuses_to_run_without_each_secret(tmp_path: Path, missing: str) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    partial = {k: v for k, v in SECRETS.items() if k != missing}
    result = compose("config", "-q", env_file=env_file, secrets=partial)
    assert result.returncode != 0
    assert missing in result.stderr


def test_secrets_also_come_from_an_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "deploy.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    result = compose("config", env_file=env_file, secrets={})
    assert result.returncode == 0, result.stderr
    gateway = yaml.safe_load(result.stdout)["services"]["gateway"]["environment"]
    assert gateway["STARRATING_ADMIN_TOKEN"] == SECRETS["STARRATING_ADMIN_TOKEN"]


def test_no_secret_has_a_literal_value_or_default() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    secret_name = re.compile(r"(PASSWORD|TOKEN|SECRET|_KEY\b)")
    # Every interpolation of a secret variable is the required form ${NAME:?message}.
    for match in re.finditer(r"\$\{([A-Z0-9_]+)([^}]*)\}", text):
        name, rest = match.groups()
        if secret_name.search(name):
            assert rest.startswith(":?"), f"${{{name}{rest}}} must be required (:?)"
    # Every environment entry that names a secret gets its value from such a variable.
    document = yaml.safe_load(text)
    for service_name, service in document["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret_name.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), (
                    f"{service_name}.{key} has a literal value"
                )
    assert "postgresql+psycopg://starrating:${STARRATING_POSTGRES_PASSWORD:?" in text


def test_services(rendered: dict[str, Any]) -> None:
    assert set(rendered["services"]) == EXPECTED_SERVICES


def test_every_service_has_a_healthcheck(rendered: dict[str, Any]) -> None:
    for name, service in rendered["services"].items():
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"


def test_torchserve_health_means_the_model_is_loaded(rendered: dict[str, Any]) -> None:
    test = rendered["services"]["torchserve"]["healthcheck"]["test"]
    assert test == ["CMD", "starrating-torchserve-healthcheck"]
    assert "/ping" not in json.dumps(test)


def test_dependencies_wait_for_healthy_services(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert services["gateway"]["depends_on"] == {
        "torchserve": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_only_gateway_and_grafana_are_published(rendered: dict[str, Any]) -> None:
    published = {
        name: [port(p) for p in service["ports"]]
        for name, service in rendered["services"].items()
        if "ports" in service
    }
    assert set(published) == {"gateway", "grafana"}
    assert [p["target"] for p in published["gateway"]] == ["8000"]
    assert [p["target"] for p in published["grafana"]] == ["3000"]
    # Loopback unless STARRATING_PUBLISH_ADDRESS says otherwise.
    for ports in published.values():
        assert all(p.get("host_ip") == "127.0.0.1" for p in ports)
    # TorchServe's management port is reachable on the internal network only.
    assert rendered["networks"]["backend"]["internal"] is True
    assert rendered["services"]["torchserve"]["networks"] == {"backend": None}


def test_gateway_reaches_torchserve_postgres_and_the_key_file(rendered: dict[str, Any]) -> None:
    gateway = rendered["services"]["gateway"]
    env = gateway["environment"]
    assert env["STARRATING_TORCHSERVE_URL"] == "http://torchserve:8080"
    assert env["STARRATING_TORCHSERVE_MANAGEMENT_URL"] == "http://torchserve:8081"
    assert env["STARRATING_DATABASE_URL"].startswith("postgresql+psycopg://starrating:")
    assert env["STARRATING_DATABASE_URL"].endswith("@postgres:5432/starrating")
    key_dir = Path(env["STARRATING_TORCHSERVE_KEY_FILE"]).parent
    state_volume = next(
        v for v in volumes(rendered["services"]["torchserve"]) if v["target"].endswith("/state")
    )
    # TorchServe writes key_file.json into its working directory, the state volume.
    assert state_volume["target"] == "/var/lib/torchserve/state"
    shared = next(v for v in volumes(gateway) if v["source"] == state_volume["source"])
    assert Path(shared["target"]) == key_dir and shared["mode"] == "ro"


def test_prometheus_scrapes_gateway_and_torchserve(rendered: dict[str, Any]) -> None:
    mount = next(
        v for v in volumes(rendered["services"]["prometheus"]) if v["target"].endswith(".yml")
    )
    config = yaml.safe_load(Path(mount["source"]).read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: (job["metrics_path"], job["static_configs"][0]["targets"])
        for job in config["scrape_configs"]
    }
    assert ("/metrics", ["gateway:8000"]) in targets.values()
    assert ("/metrics", ["torchserve:8082"]) in targets.values()


def grafana_mounts(rendered: dict[str, Any]) -> dict[str, Path]:
    return {v["target"]: Path(v["source"]) for v in volumes(rendered["services"]["grafana"])}


def test_grafana_provisions_the_datasource_and_the_dashboard_folder(
    rendered: dict[str, Any],
) -> None:
    mounts = grafana_mounts(rendered)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (provisioning / "dashboards" / "starrating.yml").read_text(encoding="utf-8")
    )["providers"][0]
    # The provider reads the folder the dashboards are mounted at.
    assert mounts[provider["options"]["path"]] == REPO / "deploy" / "grafana" / "dashboards"
    dashboards = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    uid = datasources[0]["uid"]
    for path in dashboards:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"] and dashboard["panels"]
        for panel in dashboard["panels"]:
            if "datasource" in panel:
                assert panel["datasource"]["uid"] == uid, f"{path.name}: {panel['title']}"


def test_service_dashboard_queries_metrics_the_gateway_exports() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    import api.metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {
        family.name + suffix
        for metric in vars(api.metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
        for suffix in suffixes[family.type]
    }
    dashboard = json.loads(
        (REPO / "deploy/grafana/dashboards/starrating-service.json").read_text(encoding="utf-8")
    )
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(starrating_[a-z_]+)", target["expr"])
    }
    assert queried
    assert queried <= exported, f"not exported by the gateway: {queried - exported}"
