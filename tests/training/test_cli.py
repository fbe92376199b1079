"""`starrating train`, `starrating evaluate` and `starrating runs` on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from starrating.artifacts import load_artifacts

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_data_dir: Path
) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny-v1"
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_data_dir),
            "--out",
            str(run),
            "--model",
            str(tiny_model_dir),
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--lr",
            "1e-2",
            "--warmup-ratio",
            "0",
            "--ordinal-weight",
            "0",
            "--num-workers",
            "0",
            "--checkpoint-every",
            "0",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tiny-v1" in result.output and "accuracy" in result.output
    return run


def test_a_run_directory_holds_model_metrics_config_and_plots(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 40
    assert metrics["accuracy"] > 0.4  # learnt the phrases (chance is 0.2)
    for key in ("macro_f1", "mae", "off_by_one", "qwk", "ece_before", "ece_after"):
        assert isinstance(metrics[key], float)
    assert set(metrics["rules"]) == {"LossNotDecreasing", "Overfit"}
    assert all(r["status"] in ("NoIssuesFound", "IssuesFound") for r in metrics["rules"].values())
    # The handler reads the temperature from the saved model.
    artifacts = load_artifacts(trained_run / "model")
    assert artifacts.temperature == pytest.approx(metrics["temperature"])
    assert artifacts.max_length == 128
    config = json.loads((trained_run / "config.json").read_text())
    assert config["epochs"] == 4 and config["lr"] == 1e-2
    for plot in ("confusion_matrix", "training_curves", "reliability"):
        assert (trained_run / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((trained_run / "history.json").read_text())
    assert sum("validation_accuracy" in h for h in history) == 4  # one evaluation per epoch


def test_evaluate_reproduces_the_test_metrics(trained_run: Path, tiny_data_dir: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--run", str(trained_run), "--data", str(tiny_data_dir)]
    )
    assert result.exit_code == 0, result.output
    evaluation = json.loads((trained_run / "evaluation" / "test-metrics.json").read_text())
    summary = json.loads((trained_run / "metrics.json").read_text())
    for key in ("accuracy", "mae", "qwk", "macro_f1"):
        assert evaluation[key] == pytest.approx(summary[key]), key
    assert evaluation["confusion_matrix"] == summary["confusion_matrix"]
    matrix = json.loads((trained_run / "evaluation" / "test-confusion_matrix.json").read_text())
    assert sum(map(sum, matrix["matrix"])) == 40
    assert (trained_run / "evaluation" / "test-confusion_matrix.png").is_file()


def test_evaluate_explains_a_directory_without_a_model(tmp_path: Path, tiny_data_dir: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path), "--data", str(tiny_data_dir)])
    assert result.exit_code == 2
    assert "no model/ directory" in " ".join(result.output.split())


def test_runs_lists_tracked_runs_with_their_results(trained_run: Path) -> None:
    result = runner.invoke(app, ["runs", "--root", str(trained_run.parent)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained_run / "metrics.json").read_text())
    row = next(line for line in result.output.splitlines() if "tiny-v1" in line)
    assert "finished" in row and "1e-02" in row
    assert f"{metrics['accuracy']:.3f}" in row


def test_runs_says_when_there_is_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["runs", "--root", str(tmp_path)])
    assert result.exit_code == 0 and "no tracked runs" in " ".join(result.output.split())


def test_train_refuses_a_batch_that_does_not_split(tmp_path: Path, tiny_data_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_data_dir),
            "--out",
            str(tmp_path),
            "--batch-size",
            "15",
            "--nproc-per-node",
            "2",
        ],
    )
    assert result.exit_code == 2 and "divide evenly" in " ".join(result.output.split())


def test_the_run_is_tracked_in_mlflow(trained_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained_run / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.01" and run.data.params["world_size"] == "1"
    assert run.data.params["train_files"].endswith("train.jsonl")
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 4
    assert len(client.get_metric_history(run.info.run_id, "validation_accuracy")) == 4
    assert run.data.tags["rule.Overfit"] in ("NoIssuesFound", "IssuesFound")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {
        f"plots/{p}.png" for p in ("confusion_matrix", "training_curves", "reliability")
    }


def test_early_stop_ends_training_when_a_rule_finds_an_issue(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    # A learning rate of ~0 cannot decrease the loss: LossNotDecreasing fires after a few
    # windows of ten logged steps, long before the 8 epochs (104 steps) are over.
    run = tmp_path / "stuck"
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_data_dir),
            "--out",
            str(run),
            "--model",
            str(tiny_model_dir),
            "--epochs",
            "8",
            "--batch-size",
            "16",
            "--lr",
            "1e-12",
            "--log-every",
            "1",
            "--num-workers",
            "0",
            "--checkpoint-every",
            "0",
            "--no-progress",
            "--early-stop",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"] == "rules" and metrics["steps"] < 104
    assert metrics["rules"]["LossNotDecreasing"]["status"] == "IssuesFound"
    assert (run / "model" / "config.json").is_file()  # an early stop still saves the model


def test_without_tracking_it_trains_where_mlflow_is_not_installed(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    # A bare GPU machine: importing mlflow fails there.
    blocker = tmp_path / "site" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no MLflow on this machine')\n")
    run = tmp_path / "run"
    args = ["--data", str(tiny_data_dir), "--out", str(run), "--model", str(tiny_model_dir)]
    args += ["--max-steps", "2", "--num-workers", "0", "--checkpoint-every", "0"]
    args += ["--progress", "0", "--tracking", "0"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(blocker.parent), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, "-m", "training", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    assert (run / "plots" / "reliability.png").exists() and not (run / "mlflow.db").exists()
