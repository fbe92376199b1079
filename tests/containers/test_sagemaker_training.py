"""The train image (CPU torch here, a build argument) run the way a SageMaker training job runs
it: channels in /opt/ml/input/data/<channel>, hyperparameters in
/opt/ml/input/config/hyperparameters.json and, as the SDK's driver passes them, on the command
line; SM_* variables as SageMaker sets them; the model in /opt/ml/model; metric lines the job's
regexes read; and `docker stop` (SIGTERM, a spot interruption) leaving a checkpoint in
/opt/ml/checkpoints that a second run resumes from, ending with the same weights as a run that
was never interrupted."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.containers.conftest import docker, sagemaker_training_env, wait_for
from training.metric_lines import METRIC_DEFINITIONS

# The first test to use `images` waits for a cold build (about 8 minutes here).
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

STEPS = 30
HYPERPARAMETERS = {
    "model": "/opt/ml/input/data/model",
    "max_steps": str(STEPS),
    "batch_size": "8",
    "log_every": "2",
    "num_workers": "0",
    "checkpoint_every": "2",
    "seed": "7",
}


def job(root: Path, tiny_model_dir: Path, tiny_data_dir: Path) -> Path:
    """/opt/ml as SageMaker lays it out for one instance."""
    ml = root / "opt-ml"
    for channel in ("train", "validation"):
        (ml / "input" / "data" / channel).mkdir(parents=True)
        shutil.copy(tiny_data_dir / f"{channel}.jsonl", ml / "input" / "data" / channel)
    shutil.copytree(tiny_model_dir, ml / "input" / "data" / "model")
    (ml / "input" / "config").mkdir(parents=True)
    (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    (ml / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    for folder in ("model", "checkpoints", "output"):
        (ml / folder).mkdir()
    return ml


def run_args(ml: Path, image: str, name: str) -> list[str]:
    env = sagemaker_training_env(HYPERPARAMETERS, ["algo-1"], "algo-1")
    # The SDK's driver reads hyperparameters.json and passes each as `--name value`.
    hyperparameters = json.loads(
        (ml / "input" / "config" / "hyperparameters.json").read_text(encoding="utf-8")
    )
    arguments = [part for k, v in hyperparameters.items() for part in (f"--{k}", v)]
    environment = [part for k, v in env.items() for part in ("-e", f"{k}={v}")]
    return [
        "run", "-d", "--name", name, "-v", f"{ml}:/opt/ml", *environment, image, *arguments,
    ]  # fmt: skip


def weights(ml: Path) -> dict[str, torch.Tensor]:
    return load_file(ml / "model" / "model" / "model.safetensors")


def finish(container: str, timeout_s: float = 600) -> tuple[int, str]:
    code = int(docker("wait", container, timeout=timeout_s).stdout.strip())
    logs = docker("logs", container).stderr + docker("logs", container).stdout
    docker("rm", "-f", container, check=False)
    return code, logs


@pytest.fixture(scope="module")
def uninterrupted(
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    tiny_data_dir: Path,
) -> tuple[Path, str]:
    ml = job(tmp_path_factory.mktemp("sm-job"), tiny_model_dir, tiny_data_dir)
    name = f"starrating-ci-train-{int(time.time())}"
    docker(*run_args(ml, images["train"], name))
    code, logs = finish(name)
    assert code == 0, logs[-4000:]
    return ml, logs


def test_the_job_writes_the_model_and_metric_lines_the_regexes_read(
    uninterrupted: tuple[Path, str],
) -> None:
    ml, logs = uninterrupted
    assert (ml / "model" / "model" / "config.json").is_file()
    assert (ml / "model" / "metrics.json").is_file()
    found = {
        definition["Name"]
        for definition in METRIC_DEFINITIONS
        if re.search(definition["Regex"], logs)
    }
    assert {"train:loss", "validation:accuracy", "validation:loss"} <= found, found


def test_docker_stop_leaves_a_checkpoint_that_a_second_run_resumes_to_the_same_weights(
    images: dict[str, str],
    uninterrupted: tuple[Path, str],
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_data_dir: Path,
) -> None:
    ml = job(tmp_path, tiny_model_dir, tiny_data_dir)
    name = f"starrating-ci-spot-{int(time.time())}"
    docker(*run_args(ml, images["train"], name))
    checkpoints = ml / "checkpoints"
    wait_for(lambda: any(checkpoints.glob("*.pt")), "a first checkpoint", timeout_s=300)
    # A spot interruption: SIGTERM, then SIGKILL after the grace period.
    docker("stop", "--time", "60", name, timeout=120)
    code, logs = finish(name)
    assert code != 137, "killed after the grace period instead of stopping on SIGTERM"
    saved = sorted(checkpoints.glob("*.pt"))
    assert saved, logs[-3000:]
    last = int(re.findall(r"\d+", saved[-1].name)[-1])
    assert last < STEPS, "stopped too late to test resuming"

    again = f"{name}-resumed"
    docker(*run_args(ml, images["train"], again))
    code, logs = finish(again)
    assert code == 0, logs[-4000:]
    assert "resumed from" in logs
    reference = weights(uninterrupted[0])
    resumed = weights(ml)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
