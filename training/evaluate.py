"""Evaluation: predictions gathered from every rank, rating metrics, confusion matrix and plots.

Metrics for 1-5 stars: accuracy, macro-F1, mean absolute error in stars, off-by-one accuracy
(within one star), quadratic weighted kappa, a per-class report and the confusion matrix (rows =
true stars, columns = predicted). Plots are drawn with matplotlib's object API (no global
pyplot state, no display needed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
)

from starrating.labels import NUM_LABELS, STARS
from training.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    probabilities,
)
from training.data.streaming import Batch, ReviewStream, split_files
from training.distributed import DistributedContext, all_gather_objects

logger = logging.getLogger(__name__)

CLASS_IDS = list(range(NUM_LABELS))
STAR_NAMES = [str(s) for s in STARS]


@dataclass(frozen=True)
class Predictions:
    """Logits and true class ids of a whole split, in line order."""

    index: NDArray[np.int64]
    logits: NDArray[np.float32]
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)


def predict(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    ctx: DistributedContext,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> Predictions:
    """Run ``model`` over this rank's batches and gather every rank's predictions, sorted by
    line number. Each line belongs to exactly one rank, so there are no duplicates to drop."""
    was_training = model.training
    model.eval()
    index, logits, labels = [], [], []
    with torch.inference_mode():
        for batch in batches:
            labels.append(batch.pop("labels").numpy())
            index.append(batch.pop("index").numpy())
            batch.pop("distribution", None)  # a soft label: training only
            inputs = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            with autocast():
                out = model(**inputs).logits
            logits.append(out.float().cpu().numpy())
    model.train(was_training)
    local = (
        np.concatenate(index) if index else np.zeros(0, np.int64),
        np.concatenate(logits) if logits else np.zeros((0, NUM_LABELS), np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
    )
    parts = all_gather_objects(ctx, local)
    all_index = np.concatenate([p[0] for p in parts])
    order = np.argsort(all_index, kind="stable")
    return Predictions(
        index=all_index[order],
        logits=np.concatenate([p[1] for p in parts])[order],
        labels=np.concatenate([p[2] for p in parts])[order],
    )


def compute_metrics(labels: NDArray[np.integer], probs: NDArray[np.floating]) -> dict[str, Any]:
    """Rating metrics of predicted class probabilities against true class ids."""
    if len(labels) == 0:
        raise ValueError("no reviews to evaluate")
    predicted = probs.argmax(axis=1)
    distance = np.abs(predicted - labels)
    report = classification_report(
        labels,
        predicted,
        labels=CLASS_IDS,
        target_names=STAR_NAMES,
        output_dict=True,
        zero_division=0,
    )
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        # Averaged over the classes that occur (in truth or prediction), as sklearn does.
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "mae": float(distance.mean()),
        "off_by_one": float((distance <= 1).mean()),
        "qwk": float(cohen_kappa_score(labels, predicted, labels=CLASS_IDS, weights="quadratic")),
        "per_class": {star: report[star] for star in STAR_NAMES},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=CLASS_IDS).tolist(),
    }


def evaluate_predictions(predictions: Predictions, temperature: float = 1.0) -> dict[str, Any]:
    """Metrics, log loss and calibration error of predictions at a temperature."""
    probs = probabilities(predictions.logits, temperature)
    metrics = compute_metrics(predictions.labels, probs)
    metrics["loss"] = negative_log_likelihood(predictions.logits, predictions.labels, temperature)
    metrics["ece"] = expected_calibration_error(probs, predictions.labels)
    return metrics


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set(
        xticks=CLASS_IDS,
        yticks=CLASS_IDS,
        xticklabels=[f"{s}★" for s in STARS],
        yticklabels=[f"{s}★" for s in STARS],
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss, and validation accuracy/MAE/QWK, against steps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    series = {
        key: [(h["step"], h[key]) for h in history if key in h]
        for key in (
            "train_loss",
            "validation_loss",
            "validation_accuracy",
            "validation_mae",
            "validation_qwk",
        )
    }
    for ax, keys in (
        (loss_ax, ("train_loss", "validation_loss")),
        (score_ax, ("validation_accuracy", "validation_mae", "validation_qwk")),
    ):
        for key in keys:
            if series[key]:
                steps, values = zip(*series[key], strict=True)
                ax.plot(
                    steps,
                    values,
                    marker="o" if key.startswith("validation") else None,
                    label=key.replace("_", " "),
                )
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_title("loss")
    score_ax.set_title("validation")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_reliability(
    predictions: Predictions,
    temperature: float,
    path: Path,
    bins: int = 10,
    *,
    fitted: float | None = None,
) -> Path:
    """Confidence against accuracy per bin, before and after temperature scaling. ``fitted``:
    a temperature fitted on validation but not kept (it did not help on held-out folds), drawn
    too so the reader sees what it would have done."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    curves = [(1.0, "T = 1" if temperature == 1.0 else "before")]
    if temperature != 1.0:
        curves.append((temperature, f"after (T={temperature:.2f})"))
    if fitted is not None and fitted != temperature:
        curves.append((fitted, f"fitted, not kept (T={fitted:.2f})"))
    for t, label in curves:
        probs = probabilities(predictions.logits, t)
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == predictions.labels
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
        points = [
            (confidence[which == b].mean(), correct[which == b].mean())
            for b in range(bins)
            if (which == b).any()
        ]
        xs, ys = zip(*points, strict=True)
        style = "-" if t in (1.0, temperature) else ":"
        ax.plot(xs, ys, marker="o", linestyle=style, label=label)
    ax.set(xlabel="confidence", ylabel="accuracy", title="calibration", xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
    return path


def evaluate_run(
    run_dir: Path,
    data: Path,
    *,
    split: str = "test",
    batch_size: int = 64,
    out_dir: Path | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate a trained run's model on a split; write metrics and confusion matrix files.

    ``data`` is a prepared data directory (its ``<split>.jsonl`` is used) or a split file.
    Returns the metrics and the files written (under ``RUN/evaluation`` by default). Where the
    split's rows carry their raters' ratings, ``metrics["human"]`` holds the human agreement on
    the same rows (``training.human``), and where they carry the raters' distribution over
    stars, ``metrics["rater_distribution"]`` how close the model's probabilities come to it.
    """
    from starrating.artifacts import load_artifacts
    from training.distributed import pick_device
    from training.human import split_distribution_agreement, split_human_agreement

    location = data if data.is_file() else data / f"{split}.jsonl"
    files = split_files(location if location.exists() else data / split)
    device = pick_device(0)
    artifacts = load_artifacts(run_dir / "model", device)
    stream = ReviewStream(
        files,
        artifacts.tokenizer,
        batch_size=batch_size,
        max_length=artifacts.max_length,
        shuffle=False,
    )
    ctx = DistributedContext(0, 0, 1, device, True)
    predictions = predict(artifacts.model, stream, ctx, nullcontext)
    metrics = evaluate_predictions(predictions, artifacts.temperature)
    metrics |= {
        "split": split,
        "data": [str(f) for f in files],
        "temperature": artifacts.temperature,
    }
    human = split_human_agreement(files)
    if human is not None:
        metrics["human"] = human
    raters = split_distribution_agreement(
        files, probabilities(predictions.logits, artifacts.temperature)
    )
    if raters is not None:
        metrics["rater_distribution"] = raters
    out = out_dir or run_dir / "evaluation"
    written = [
        write_json(out / f"{split}-metrics.json", metrics),
        write_json(
            out / f"{split}-confusion_matrix.json",
            {
                "labels": [int(s) for s in STARS],
                "rows": "true stars",
                "columns": "predicted stars",
                "matrix": metrics["confusion_matrix"],
            },
        ),
        plot_confusion_matrix(
            metrics["confusion_matrix"],
            out / f"{split}-confusion_matrix.png",
            f"{run_dir.name}: {split} ({len(predictions)} reviews)",
        ),
    ]
    return metrics, written
