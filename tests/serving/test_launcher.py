"""The launcher's decisions, without starting servers: one layout for every part, and what is
left running when starting fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving import launcher
from serving.errors import GatewayWontBeReadyError, LifecycleError
from serving.launcher import GatewayOptions, StackPlan, launch, running_stack
from serving.paths import ServingPaths
from serving.sizing import ServingLayout
from serving.torchserve_config import TorchServeOptions
from tests.serving.test_archives import fake_mar


class Recorder:
    """Stands in for the process functions the launcher calls; records what they got."""

    def __init__(self, gateway_fails: Exception | None = None) -> None:
        self.calls: dict[str, Any] = {}
        self.stopped: list[str] = []
        self.gateway_fails = gateway_fails

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(launcher, "start_torchserve", self.start_torchserve)
        monkeypatch.setattr(launcher, "_register", self.register)
        monkeypatch.setattr(launcher, "start_gateway", self.start_gateway)
        monkeypatch.setattr(launcher, "stop_torchserve", lambda _: self.stopped.append("ts"))
        monkeypatch.setattr(launcher, "stop_gateway", lambda _: self.stopped.append("gateway"))

    def start_torchserve(self, paths: Any, options: Any, archives: Any, **kwargs: Any) -> int:
        self.calls["torchserve"] = kwargs
        return 101

    def register(self, plan: Any, archives: Any, layout: Any, progress: Any) -> str:
        self.calls["register"] = layout
        return str(archives[-1].version)

    def start_gateway(self, paths: Any, env: Any, **kwargs: Any) -> int:
        if self.gateway_fails is not None:
            raise self.gateway_fails
        self.calls["gateway"] = env
        return 202


@pytest.fixture
def plan(tmp_path: Path) -> StackPlan:
    store = tmp_path / "store"
    for version in ("1.0", "2.0"):
        fake_mar(store / f"stars-{version}.mar", "stars", version)
    return StackPlan(
        paths=ServingPaths.under(tmp_path / "home"),
        torchserve=TorchServeOptions(model_store=store),
        gateway=GatewayOptions(port=8123, env={"PATH": "/bin"}),
    )


def test_one_layout_sizes_torchserve_its_registration_and_the_gateway(
    plan: StackPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    decided: list[int] = []

    def layout(versions: int, cpus: int | None = None) -> ServingLayout:
        decided.append(versions)
        return ServingLayout(workers_per_version=3, threads_per_worker=2)

    monkeypatch.setattr(launcher, "serving_layout", layout)
    recorder = Recorder()
    recorder.install(monkeypatch)

    stack = launch(plan)

    assert decided == [2]
    assert recorder.calls["torchserve"]["layout"] == stack.layout == ServingLayout(3, 2)
    assert recorder.calls["register"] == stack.layout
    env = recorder.calls["gateway"]
    assert env["STARRATING_COALESCE_MAX_IN_FLIGHT"] == "3"
    assert env["STARRATING_TORCHSERVE_URL"] == plan.torchserve.inference_url
    assert env["PATH"] == "/bin"
    assert (stack.versions, stack.default_version) == (["1.0", "2.0"], "2.0")
    assert stack.started_gateway().url == "http://127.0.0.1:8123"
    assert (stack.torchserve_pid, stack.started_gateway().pid) == (101, 202)


def test_a_gateway_that_fails_to_start_takes_torchserve_down_with_it(
    plan: StackPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(gateway_fails=LifecycleError("the gateway exited"))
    recorder.install(monkeypatch)
    with pytest.raises(LifecycleError, match="exited"):
        launch(plan)
    assert recorder.stopped == ["ts"]


def test_a_stale_experiment_leaves_launch_running_but_not_the_context_manager(
    plan: StackPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(gateway_fails=GatewayWontBeReadyError("stale experiment"))
    recorder.install(monkeypatch)
    with pytest.raises(GatewayWontBeReadyError):
        launch(plan)
    assert recorder.stopped == []  # `starrating serve`: fixed through the running gateway
    with pytest.raises(GatewayWontBeReadyError), running_stack(plan):
        pass
    assert recorder.stopped == ["gateway", "ts"]


def test_the_context_manager_stops_both_on_exit(
    plan: StackPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    with running_stack(plan) as stack:
        assert recorder.stopped == []
        assert stack.default_version == "2.0"
    assert recorder.stopped == ["gateway", "ts"]


def test_an_empty_model_store_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    empty = StackPlan(ServingPaths.under(tmp_path), TorchServeOptions(model_store=tmp_path))
    with pytest.raises(LifecycleError, match="starrating archive"):
        launch(empty)
    assert recorder.calls == {} and recorder.stopped == []
