"""The Dockerfile: hadolint-clean, and each target has what a deployment relies on.

No image is built here (no Docker engine on these machines); `make images` builds them where
there is one.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.conftest import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_stages(text: str) -> dict[str, Stage]:
    """Stages by name, instructions with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            current = Stage(
                name=parts[-1] if "AS" in (p.upper() for p in parts) else "", base=parts[0]
            )
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


STAGES = parse_stages(DOCKERFILE.read_text(encoding="utf-8"))


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # Proves the linter runs rules at all: an unpinned base and apt without cleanup fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def lineage(name: str) -> list[Stage]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = []
    while name in STAGES:
        chain.append(STAGES[name])
        name = STAGES[name].base
    return chain


def effective(name: str, keyword: str) -> str | None:
    for stage in lineage(name):
        value = stage.last(keyword)
        if value is not None:
            return value
    return None


@pytest.mark.parametrize("target", ["serve", "gateway", "train"])
def test_targets_exist(target: str) -> None:
    assert target in STAGES


def test_dependencies_are_installed_before_any_code_is_copied() -> None:
    for deps in ("deps-cpu", "deps-cuda"):
        copies = STAGES[deps].all("COPY")
        assert copies == ["deploy/docker/requirements.lock /tmp/requirements.lock"]
        installs = " ".join(STAGES[deps].all("RUN"))
        assert "-r /tmp/requirements.lock" in installs and "torch==" in installs
    for app, deps in (("app-cpu", "deps-cpu"), ("app-cuda", "deps-cuda")):
        assert STAGES[app].base == deps
        # The project goes in without resolving anything again.
        assert STAGES[app].all("RUN") == ["pip install --no-deps ."]
        assert STAGES[app].all("COPY") == ["--from=source /src/ ./"]
    source = " ".join(STAGES["source"].all("COPY"))
    for package in ("starrating", "training", "handlers", "api", "loadtests"):
        assert f"{package} /src/{package}" in source


def test_serving_images_share_the_cpu_dependencies_and_train_has_cuda_torch() -> None:
    assert [s.name for s in lineage("serve")][1:3] == ["app-cpu", "deps-cpu"]
    assert [s.name for s in lineage("gateway")][1:3] == ["app-cpu", "deps-cpu"]
    assert [s.name for s in lineage("train")][1:3] == ["app-cuda", "deps-cuda"]
    cuda_install = " ".join(STAGES["deps-cuda"].all("RUN"))
    assert "--index-url" not in cuda_install  # PyPI's default torch wheel is the CUDA build
    assert "/whl/cpu" in " ".join(STAGES["deps-cpu"].all("ARG"))


@pytest.mark.parametrize("target", ["serve", "gateway"])
def test_service_images_run_as_a_numeric_non_root_user(target: str) -> None:
    user = effective(target, "USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_serve_image_runs_torchserve_with_a_model_healthcheck() -> None:
    serve = STAGES["serve"]
    assert set(" ".join(serve.all("EXPOSE")).split()) == {"8080", "8081", "8082"}
    assert "openjdk-17-jre-headless" in " ".join(serve.all("RUN"))
    healthcheck = serve.last("HEALTHCHECK")
    assert healthcheck is not None and "starrating-torchserve-healthcheck" in healthcheck
    entrypoint = serve.last("ENTRYPOINT")
    assert entrypoint is not None and "starrating-torchserve" in entrypoint
    assert "tini" in entrypoint  # SIGTERM must reach TorchServe's Java frontend too
    copies = " ".join(serve.all("COPY"))
    assert "model_store/" in copies


def test_gateway_image_runs_the_app_factory_under_uvicorn() -> None:
    cmd = STAGES["gateway"].last("CMD")
    assert cmd is not None
    assert '"uvicorn", "api.app:create_app", "--factory"' in cmd
    assert STAGES["gateway"].last("HEALTHCHECK") is not None


def test_train_image_enters_training_train_py() -> None:
    entrypoint = STAGES["train"].last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.endswith('training/train.py"]')
    assert (REPO / "training" / "train.py").is_file()


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in STAGES.values():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue  # copies between stages, not from the build context
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            for source in words[:-1]:
                source = source.rstrip("/")
                assert (REPO / source).exists(), f"COPY {source}: no such path"
                assert any(source == inc or source.startswith(inc + "/") for inc in included), (
                    f"COPY {source}: excluded by .dockerignore"
                )


def test_lock_pins_every_runtime_dependency_compatibly() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    lock = {}
    for line in (REPO / "deploy/docker/requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[re.sub(r"[-_.]+", "-", name.lower())] = version
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name.lower())
        if name == "torch":  # installed by the Dockerfile itself, per target
            continue
        assert name in lock, f"{name} is missing from deploy/docker/requirements.lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{name}=={lock[name]} does not satisfy {requirement.specifier}"
        )
