"""TorchServe's config and the gateway's environment as the launcher writes them, without
starting servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.archives import ArchiveInfo
from serving.gateway_process import gateway_env
from serving.paths import ServingPaths
from serving.sizing import serving_layout
from serving.torchserve_config import TorchServeOptions


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def test_config_is_loopback_prometheus_and_token_auth_on_by_default(tmp_path: Path) -> None:
    options = TorchServeOptions(model_store=tmp_path / "store")
    config = properties(options.config_properties([]))
    assert config["inference_address"] == "http://127.0.0.1:8080"
    assert config["management_address"] == "http://127.0.0.1:8081"
    assert config["metrics_address"] == "http://127.0.0.1:8082"
    assert config["metrics_mode"] == "prometheus"
    assert config["grpc_inference_address"] == "127.0.0.1"
    assert config["grpc_management_address"] == "127.0.0.1"
    assert config["disable_token_authorization"] == "false"
    assert config["enable_model_api"] == "true"
    store = (tmp_path / "store").resolve()
    assert re.fullmatch(config["allowed_urls"], f"file://{store}/stars-1.0.mar")
    assert not re.fullmatch(config["allowed_urls"], "file:///etc/passwd")
    assert not re.fullmatch(config["allowed_urls"], "https://example.com/evil.mar")
    assert "load_models" not in config


def test_insecure_dev_turns_token_auth_off(tmp_path: Path) -> None:
    options = TorchServeOptions(model_store=tmp_path, token_auth=False)
    assert properties(options.config_properties([]))["disable_token_authorization"] == "true"
    env = gateway_env({"STARRATING_TORCHSERVE_KEY_FILE": "stale"}, ServingPaths(tmp_path), options)
    assert "STARRATING_TORCHSERVE_KEY_FILE" not in env


def test_gateway_gets_the_key_file_and_addresses(tmp_path: Path) -> None:
    paths = ServingPaths.under(tmp_path)
    options = TorchServeOptions(model_store=tmp_path, inference_url="http://127.0.0.1:9080")
    env = gateway_env({"PATH": "/bin"}, paths, options)
    assert env["STARRATING_TORCHSERVE_KEY_FILE"] == str(paths.key_file)
    assert env["STARRATING_TORCHSERVE_URL"] == "http://127.0.0.1:9080"
    assert env["STARRATING_HOME"] == str(paths.home)
    assert env["PATH"] == "/bin"


def test_model_api_stays_off_when_management_leaves_loopback(tmp_path: Path) -> None:
    options = TorchServeOptions(model_store=tmp_path, management_url="http://0.0.0.0:8081")
    archives = [ArchiveInfo(tmp_path / "stars-1.0.mar", "stars", "1.0")]
    config = properties(options.config_properties(archives))
    assert config["enable_model_api"] == "false"
    assert config["load_models"] == "stars-1.0.mar"


@pytest.mark.parametrize(
    ("cpus", "versions", "in_flight"), [(2, 1, "2"), (2, 2, "1"), (16, 1, "4")]
)
def test_the_gateway_keeps_a_request_in_flight_per_torchserve_worker(
    cpus: int, versions: int, in_flight: str, tmp_path: Path
) -> None:
    layout = serving_layout(versions, cpus)
    options = TorchServeOptions(model_store=tmp_path)
    env = gateway_env({}, ServingPaths(tmp_path), options, layout=layout)
    assert env["STARRATING_COALESCE_MAX_IN_FLIGHT"] == in_flight
    config = properties(options.config_properties([], layout))
    assert config["default_workers_per_model"] == in_flight  # the same layout, one decision


def test_a_coalescing_bound_the_caller_set_wins_over_the_layout(tmp_path: Path) -> None:
    base = {"STARRATING_COALESCE_MAX_IN_FLIGHT": "7"}
    options = TorchServeOptions(model_store=tmp_path)
    env = gateway_env(base, ServingPaths(tmp_path), options, layout=serving_layout(1, 16))
    assert env["STARRATING_COALESCE_MAX_IN_FLIGHT"] == "7"
