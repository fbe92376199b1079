"""The gateway's own install: `pip install '.[gateway]'` in a fresh virtual environment brings
no torch, transformers, MLflow or TorchServe, and the gateway starts and answers from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx
import pytest

from serving.addresses import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL_LIBRARIES = ("torch", "transformers", "mlflow", "ts", "model_archiver", "locust")
# The project as a fresh clone has it: no virtual environment, build output or run state.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "var", "model_store", "docs", "build", "*.egg-info", "__pycache__", ".*cache"
)


@pytest.fixture(scope="module")
def gateway_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gateway-install")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[gateway]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return root / "venv"


@pytest.mark.slow
@pytest.mark.integration
def test_the_gateway_extra_installs_no_model_libraries(gateway_venv: Path) -> None:
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {list(MODEL_LIBRARIES)!r} "
        "if importlib.util.find_spec(m) is not None]))"
    )
    found = subprocess.run(
        [str(gateway_venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.integration
def test_the_gateway_starts_and_answers_from_its_own_install(
    gateway_venv: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(gateway_venv / "bin" / "uvicorn"),
                "api.app:create_app",
                "--factory",
                "--port",
                str(port),
            ],
            cwd=tmp_path,  # imports come from the fresh install, not from this checkout
            env={"PATH": "/usr/bin:/bin", "STARRATING_HOME": str(tmp_path / "home")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the gateway did not start: {log.read_text()[-3000:]}")
                time.sleep(0.3)
        assert answer.status_code == 200, answer.text
        # No TorchServe behind it: not ready, said as the API's JSON error, not a crash.
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.integration
def test_a_command_of_another_role_names_the_extra_to_install(gateway_venv: Path) -> None:
    result = subprocess.run(
        [str(gateway_venv / "bin" / "starrating"), "evaluate", "--run", "run", "--data", "data"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'starrating[train]'" in result.stdout + result.stderr


def test_importing_the_gateway_app_imports_no_model_library() -> None:
    probe = (
        f"import sys, api.app; print([m for m in {list(MODEL_LIBRARIES)!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"
