"""The Dockerfile: hadolint-clean, and each target has what a deployment relies on.

Read statically here; tests/containers builds the images and runs them.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    "dockerfile",
    [
        DOCKERFILE,
        REPO / "deploy/docker/postgres/Dockerfile",
        REPO / "deploy/docker/prometheus/Dockerfile",
    ],
    ids=["starrating", "postgres", "prometheus"],
)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60
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


ROLES = ("gateway", "serve", "train")


def lock(role: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / f"deploy/docker/requirements-{role}.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_dependencies_are_installed_before_any_code_is_copied() -> None:
    for role in ROLES:
        deps = STAGES[f"deps-{role}"]
        assert deps.all("COPY") == [
            f"deploy/docker/requirements-{role}.lock /tmp/requirements.lock"
        ]
        installs = " ".join(deps.all("RUN"))
        assert "-r /tmp/requirements.lock" in installs
        assert ("torch==" in installs) == (role != "gateway")
        app = STAGES[f"app-{role}"]
        assert app.base == f"deps-{role}"
        # The project goes in without resolving anything again.
        [install] = app.all("RUN")
        assert install.endswith("pip install --no-deps .")
        assert app.all("COPY") == ["--from=source /src/ ./"]
    source = " ".join(STAGES["source"].all("COPY"))
    packages = (
        "starrating",
        "cli",
        "training",
        "handlers",
        "api",
        "abtesting",
        "serving",
        "loadtests",
    )
    for package in packages:
        assert f"{package} /src/{package}" in source


def test_each_image_installs_its_own_role_and_torch_from_an_index_it_is_given() -> None:
    for target in ROLES:
        assert [s.name for s in lineage(target)][1:3] == [f"app-{target}", f"deps-{target}"]
    # No index is named in the Dockerfile: torch's index is a build argument (the CPU index for
    # serve, given by whoever builds: `make images` serves this machine's CPU wheel), added to
    # pip's own index; without one, pip's own configuration decides.
    assert "TORCH_INDEX_URL=" in STAGES["deps-serve"].all("ARG")
    assert "TRAIN_TORCH_INDEX_URL=" in STAGES["deps-train"].all("ARG")
    serve, train = (" ".join(STAGES[f"deps-{r}"].all("RUN")) for r in ("serve", "train"))
    assert '${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"}' in serve
    assert '${TRAIN_TORCH_INDEX_URL:+--extra-index-url "${TRAIN_TORCH_INDEX_URL}"}' in train
    assert "--index-url" not in serve.replace("--extra-index-url", "")
    assert "--index-url" not in train.replace("--extra-index-url", "")


def test_the_base_image_is_an_argument_defaulting_to_the_official_slim_python() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert STAGES["python-base"].base == "${PYTHON_IMAGE}"
    # No frontend image to pull (no registry here), and nothing of this machine baked in.
    assert not text.startswith("# syntax")
    for local in ("/opt/wheels", "ca-certificates.crt", "starrating-python"):
        assert local not in text


def test_pip_gets_a_proxy_ca_only_as_a_build_secret() -> None:
    for stage in STAGES.values():
        for run in stage.all("RUN"):
            if "pip install" in run:
                assert run.startswith("--mount=type=secret,id=pip-ca "), run
    assert all(
        kw != "ENV" or "PIP_CERT" not in a for s in STAGES.values() for kw, a in s.instructions
    )


@pytest.mark.parametrize("target", ["serve", "gateway"])
def test_service_images_run_as_a_numeric_non_root_user(target: str) -> None:
    user = effective(target, "USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_serve_image_runs_torchserve_with_a_model_healthcheck() -> None:
    serve = STAGES["serve"]
    assert set(" ".join(serve.all("EXPOSE")).split()) == {"8080", "8081", "8082"}
    # The JDK is installed with the serving dependencies, before any project file is copied,
    # so a code change does not reinstall it; the serve image is built on that stage.
    assert "openjdk-17-jre-headless" in " ".join(STAGES["deps-serve"].all("RUN"))
    assert all("--from=source" not in copy for copy in STAGES["deps-serve"].all("COPY"))
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


def test_train_image_enters_the_sagemaker_entry() -> None:
    entrypoint = STAGES["train"].last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.endswith('training/sagemaker_entry.py"]')
    assert (REPO / "training" / "sagemaker_entry.py").is_file()


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
                assert any(
                    fnmatch.fnmatch(source, inc) or source.startswith(inc + "/") for inc in included
                ), f"COPY {source}: excluded by .dockerignore"


def requirements(extra: str, pyproject: dict[str, Any]) -> list[Requirement]:
    """The core's requirements and an extra's, nested extras of the project expanded."""
    found = [Requirement(spec) for spec in pyproject["project"]["dependencies"]]
    for spec in pyproject["project"]["optional-dependencies"][extra]:
        requirement = Requirement(spec)
        if requirement.name == pyproject["project"]["name"]:
            for nested in requirement.extras:
                found += requirements(nested, pyproject)
        else:
            found.append(requirement)
    return found


@pytest.mark.parametrize("role", ROLES)
def test_each_lock_pins_its_roles_dependencies_compatibly(role: str) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins = lock(role)
    for requirement in requirements(role, pyproject):
        name = re.sub(r"[-_.]+", "-", requirement.name.lower())
        if name == "torch":  # installed by the Dockerfile itself, per target
            continue
        assert name in pins, f"{name} is missing from deploy/docker/requirements-{role}.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {requirement.specifier}"
        )


def test_gateway_lock_is_lean_and_serve_lock_has_no_training_or_bench_deps() -> None:
    gateway, serve = lock("gateway"), lock("serve")
    for heavy in ("torch", "transformers", "mlflow", "torchserve", "torch-model-archiver"):
        assert heavy not in gateway
    # matplotlib is not in this list: captum (explanations) requires it.
    for training_only in ("mlflow", "pyarrow", "scikit-learn", "locust", "accelerate"):
        assert training_only not in serve
    # Versions agree where two roles share a package.
    shared = set(gateway) & set(serve) & set(lock("train"))
    assert shared and all(gateway[n] == serve[n] == lock("train")[n] for n in shared)
