"""The report of a finished training run, written by rank 0 once the steps are over.

``summarise_run`` calibrates on the validation split (cross-fitted, ``training.calibration``)
and evaluates the final split (test where there is one); ``save_run`` writes the model and the
results into the run directory, ``plot_run`` the three plots, and ``track_run`` the final
metrics, tags and files to MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starrating.artifacts import save_artifacts
from starrating.labels import STARS
from training.calibration import CalibrationChoice, choose_temperature, probabilities
from training.config import TrainConfig
from training.data.streaming import split_files
from training.evaluate import (
    Predictions,
    evaluate_predictions,
    plot_confusion_matrix,
    plot_reliability,
    plot_training_curves,
    write_json,
)
from training.human import split_distribution_agreement, split_human_agreement
from training.tracking import RunTracker

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The final split's results in its metric line (and in MLflow, with the loss).
FINAL_METRICS = ("accuracy", "macro_f1", "mae", "off_by_one", "qwk")
# The metrics of a split that the summary keeps (besides calibration and the per-class detail).
HEADLINE_METRICS = ("n", *FINAL_METRICS, "loss")


@dataclass(frozen=True)
class RunSummary:
    """The final results of a run: ``summary`` is what ``RUN/metrics.json`` holds."""

    split: str  # the final split: "test", or "validation" where there is no test split
    predictions: Predictions  # of the final split
    temperature: float
    summary: dict[str, Any]
    calibration: CalibrationChoice | None = None

    @property
    def final_metrics(self) -> dict[str, float]:
        """The final split's results and the calibration, as the metric line names them."""
        return {f"{self.split}_{k}": self.summary[k] for k in FINAL_METRICS} | {
            "ece_before": self.summary["ece_before"],
            "ece_after": self.summary["ece_after"],
            "temperature": self.temperature,
        }


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_METRICS}


def summarise_run(
    validation: Predictions, test: Predictions | None, run: dict[str, Any]
) -> RunSummary:
    """Choose the temperature on ``validation`` (cross-fitted: T = 1 unless it helps on held-out
    folds) and evaluate the final split before and after it; ``run`` (rules, steps, time, where
    it ran) completes the summary."""
    calibration = choose_temperature(validation.logits, validation.labels)
    temperature = calibration.temperature
    val_before = evaluate_predictions(validation)
    val_after = evaluate_predictions(validation, temperature)
    split, final = ("test", test) if test is not None else ("validation", validation)
    before = evaluate_predictions(final, 1.0)
    after = evaluate_predictions(final, temperature)
    summary: dict[str, Any] = {
        "split": split,
        **_headline(after),
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "temperature": temperature,
        "calibration": calibration.to_json(),
        "per_class": after["per_class"],
        "confusion_matrix": after["confusion_matrix"],
        "validation": _headline(val_after)
        | {"ece_before": val_before["ece"], "ece_after": val_after["ece"]},
        **run,
    }
    return RunSummary(split, final, temperature, summary, calibration)


def _split_location(out: Path, split: str) -> Path | None:
    """A split's file or directory as the run's ``config.json`` names it."""
    path = out / "config.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    config = TrainConfig(out=out, data=Path(saved["data"]) if saved.get("data") else None)
    if saved.get(split):
        setattr(config, split, Path(saved[split]))
    return config.split_path(split)


def add_human_agreement(
    out: Path, summary: dict[str, Any], final: Predictions | None = None, temperature: float = 1.0
) -> None:
    """The human agreement beside the model's numbers (``human``: single rater, half panel) of
    the final split and of validation, where their rows carry their raters' ratings; and how
    close the ``final`` predictions come to the raters' distribution (``rater_distribution``)."""
    for split, block in ((summary["split"], summary), ("validation", summary["validation"])):
        location = _split_location(out, split)
        if location is None:
            continue
        files = split_files(location)
        human = split_human_agreement(files)
        if human is not None:
            block["human"] = human
        if final is not None and block is summary:
            probs = probabilities(final.logits, temperature)
            raters = split_distribution_agreement(files, probs)
            if raters is not None:
                block["rater_distribution"] = raters


@dataclass(frozen=True)
class SavedRun:
    """Where ``save_run`` put the model, and the result files it wrote."""

    model_dir: Path
    files: list[Path]


def save_run(
    out: Path,
    result: RunSummary,
    history: list[dict[str, Any]],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> SavedRun:
    """The model (with its temperature) in ``out/model``; metrics (with the human agreement on
    the same rows, where known), confusion matrix and history as JSON beside the config the run
    started with."""
    add_human_agreement(out, result.summary, result.predictions, result.temperature)
    model_dir = save_artifacts(
        out / "model", model, tokenizer, max_length=max_length, temperature=result.temperature
    )
    matrix = {
        "split": result.split,
        "labels": list(STARS),
        "rows": "true stars",
        "columns": "predicted stars",
        "matrix": result.summary["confusion_matrix"],
    }
    files = [
        write_json(out / "metrics.json", result.summary),
        write_json(out / "confusion_matrix.json", matrix),
        write_json(out / "history.json", history),
        out / "config.json",
    ]
    return SavedRun(model_dir, files)


def plot_run(out: Path, result: RunSummary, history: list[dict[str, Any]]) -> list[Path]:
    """The confusion matrix, the training curves and the reliability diagram in ``out/plots``."""
    plots = out / "plots"
    return [
        plot_confusion_matrix(
            result.summary["confusion_matrix"],
            plots / "confusion_matrix.png",
            f"{result.split} ({result.summary['n']} reviews)",
        ),
        plot_training_curves(history, plots / "training_curves.png"),
        plot_reliability(
            result.predictions,
            result.temperature,
            plots / "reliability.png",
            fitted=result.calibration.fitted_temperature if result.calibration else None,
        ),
    ]


def track_run(
    tracker: RunTracker, result: RunSummary, saved: SavedRun, plots: list[Path], step: int
) -> None:
    """Final metrics, rule and stop tags, result files and plots; the MLflow run ends FINISHED."""
    summary = result.summary
    loss = {f"{result.split}_loss": summary["loss"]}
    tracker.log_metrics(
        result.final_metrics | loss | {"train_time_s": summary["train_time_s"]}, step=step
    )
    tracker.set_tags(
        {f"rule.{name}": r["status"] for name, r in summary["rules"].items()}
        | {"stopped": summary["stopped"], "model_dir": str(saved.model_dir.resolve())}
    )
    tracker.log_artifacts(saved.files)
    tracker.log_artifacts(plots, "plots")
    tracker.end("FINISHED")
