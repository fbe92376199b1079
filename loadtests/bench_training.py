"""``starrating bench training``: the project's training loop against ``transformers.Trainer``.

Both train the same model on the same prepared split with the same global batch, optimizer
settings (fused AdamW, learning rate, weight decay, warmup, gradient clipping), maximum length
and tokenisation (``starrating.encode_batch`` per batch, padded to the batch's longest review),
with the same number of data-loader workers. Each optimizer step's end is timed: throughput is
measured over the steps after a warm-up, and the time to the first step from the start of
training (model load and data loading included) is measured on the split and on a copy ten times
as large, which shows whether the data is read lazily.

The loop under test is ``training.loop.Trainer`` itself; the benchmark only wraps its training
step (``training.step.TrainingStep.take``: forward, loss, backward and the optimizer step) with a
clock and stops it after the steps it needs.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from loadtests.reviews import load_reviews, prepare_embedded

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
LARGER_FACTOR = 10
FIRST_STEP_REPEATS = 2


class EnoughSteps(Exception):
    """Raised by the step clock once it has timed the steps it needs."""


@dataclass
class StepClock:
    """End times (``perf_counter``) of optimizer steps, counted from ``started``."""

    stop_after: int
    started: float = field(default_factory=time.perf_counter)
    ends: list[float] = field(default_factory=list)

    def tick(self) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) >= self.stop_after:
            raise EnoughSteps

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            result = step(*args, **kwargs)
            self.tick()
            return result

        return timed

    @property
    def first_step_s(self) -> float:
        return self.ends[0] - self.started

    def samples_per_s(self, warmup_steps: int, batch_size: int) -> float:
        """Throughput over the steps after ``warmup_steps``."""
        measured = self.ends[warmup_steps:]
        if len(measured) < 2:
            raise ValueError("need at least two timed steps after the warm-up")
        return (len(measured) - 1) * batch_size / (measured[-1] - measured[0])


@dataclass(frozen=True)
class TrainingBenchConfig:
    """What ``starrating bench training`` was asked to do."""

    data: Path | None = None
    model: str | None = None
    batch_size: int = 32
    warmup_steps: int = 3
    steps: int = 15
    num_workers: int = 1
    precisions: tuple[str, ...] = PRECISIONS
    repeats: int = 2


@dataclass
class TrainingBenchReport:
    """Samples/s per (implementation, precision) and times to the first step."""

    model: str
    batch_size: int
    steps: int
    samples_per_s: dict[str, dict[str, float]] = field(default_factory=dict)
    first_step_s: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def loop_over_trainer(self) -> float | None:
        loop = self.samples_per_s.get("loop", {}).get("fp32")
        trainer = self.samples_per_s.get("trainer", {}).get("fp32")
        return loop / trainer if loop and trainer else None

    @property
    def first_step_ratio_10x(self) -> float | None:
        small, large = self.first_step_s.get("1x"), self.first_step_s.get(f"{LARGER_FACTOR}x")
        return large / small if small and large else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "loop_over_trainer": self.loop_over_trainer,
            "first_step_ratio_10x": self.first_step_ratio_10x,
        }


def _train_config(
    data: Path, out: Path, config: TrainingBenchConfig, precision: str, tracking: Path
) -> Any:
    from starrating.models import DEFAULT_MODEL
    from training.config import TrainConfig

    train_config = TrainConfig(
        # One MLflow store for every timed run: its tables are created once, so the first-step
        # times of the two data sizes do not differ by that.
        tracking_uri=f"sqlite:///{tracking.resolve()}",
        out=out,
        data=data,
        model=config.model or DEFAULT_MODEL,
        batch_size=config.batch_size,
        max_steps=config.warmup_steps + config.steps,
        precision=precision,  # type: ignore[arg-type]
        num_workers=config.num_workers,
        progress=False,
        seed=42,
    )
    train_config.validate()
    return train_config


def time_loop(
    data: Path, workdir: Path, config: TrainingBenchConfig, precision: str, steps: int
) -> StepClock:
    """Run ``training.loop.Trainer`` on ``data`` and time its first ``steps`` optimizer steps."""
    import training.loop
    from training.distributed import distributed_context
    from training.step import TrainingStep

    out = Path(tempfile.mkdtemp(prefix="loop-", dir=workdir))
    train_config = _train_config(data, out, config, precision, workdir / "mlflow.db")
    clock = StepClock(stop_after=steps)
    with (
        mock.patch.object(TrainingStep, "take", clock.wrap(TrainingStep.take)),
        distributed_context() as ctx,
        suppress(EnoughSteps),
    ):
        training.loop.Trainer(train_config, ctx).run()
    shutil.rmtree(out, ignore_errors=True)
    return clock


def time_hf_trainer(
    data: Path, workdir: Path, config: TrainingBenchConfig, precision: str
) -> StepClock:
    """Train with ``transformers.Trainer`` on the same split, model, batch and settings."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from starrating.labels import star_to_id
    from starrating.models import load_pretrained
    from starrating.text import encode_batch

    loop_config = _train_config(data, workdir, config, precision, workdir / "mlflow.db")
    reviews = load_reviews(data, splits=("train",))
    rows = [
        {"text": t, "label": star_to_id(s)}
        for t, s in zip(reviews.texts, reviews.stars, strict=True)
    ]
    clock = StepClock(stop_after=config.warmup_steps + config.steps)
    torch.manual_seed(loop_config.seed)
    model, tokenizer = load_pretrained(loop_config.model, loop_config.max_length)

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = dict(encode_batch(tokenizer, [r["text"] for r in batch], loop_config.max_length))
        encoded["labels"] = torch.tensor([r["label"] for r in batch], dtype=torch.long)
        return encoded

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.tick()

    arguments = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(prefix="trainer-", dir=workdir))),
        per_device_train_batch_size=config.batch_size,
        max_steps=config.warmup_steps + config.steps,
        learning_rate=loop_config.lr,
        weight_decay=loop_config.weight_decay,
        warmup_steps=loop_config.warmup_ratio,  # a float in [0, 1) is a ratio
        max_grad_norm=loop_config.grad_clip,
        lr_scheduler_type="linear",
        optim="adamw_torch_fused",
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=config.num_workers,
        remove_unused_columns=False,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=loop_config.seed,
    )
    clock.started = time.perf_counter()
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=rows,  # type: ignore[arg-type]
        data_collator=collate,
        callbacks=[Clock()],
    )
    with suppress(EnoughSteps):
        trainer.train()
    return clock


def larger_copy(data: Path, out: Path, factor: int = LARGER_FACTOR) -> Path:
    """``data`` with its training split repeated ``factor`` times (summary.json to match)."""
    out.mkdir(parents=True, exist_ok=True)
    train = (data / "train.jsonl").read_bytes()
    with (out / "train.jsonl").open("wb") as handle:
        for _ in range(factor):
            handle.write(train)
    for name in ("validation.jsonl", "test.jsonl"):
        if (data / name).is_file():
            shutil.copy2(data / name, out / name)
    summary_path = data / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary["splits"]["train"]["rows"] *= factor
        (out / "summary.json").write_text(json.dumps(summary))
    return out


@contextmanager
def _bench_data(data: Path | None, workdir: Path) -> Iterator[Path]:
    if data is not None:
        if not (data / "train.jsonl").is_file():
            raise FileNotFoundError(
                f"{data} has no train.jsonl; give a `starrating data prepare` directory"
            )
        yield data
    else:
        yield prepare_embedded(workdir / "data")


def run_training_bench(config: TrainingBenchConfig) -> TrainingBenchReport:
    """Throughput of the loop and the Trainer per precision, and first-step times 1x vs 10x."""
    from starrating.models import DEFAULT_MODEL

    report = TrainingBenchReport(config.model or DEFAULT_MODEL, config.batch_size, config.steps)
    total_steps = config.warmup_steps + config.steps
    with tempfile.TemporaryDirectory(prefix="starrating-bench-train-") as tmp:
        workdir = Path(tmp)
        with _bench_data(config.data, workdir) as data:
            larger = larger_copy(data, workdir / f"data-{LARGER_FACTOR}x")
            report.rows = {
                "1x": len(load_reviews(data, splits=("train",))),
                f"{LARGER_FACTOR}x": len(load_reviews(larger, splits=("train",))),
            }
            # Loop and Trainer alternate, best of ``repeats`` each: on a shared machine a
            # neighbour's burst then hits both alike instead of deciding the ratio.
            for _ in range(config.repeats):
                for precision in config.precisions:
                    logger.info("timing the training loop, %s", precision)
                    loop = time_loop(data, workdir, config, precision, total_steps)
                    logger.info("timing transformers.Trainer, %s", precision)
                    trainer = time_hf_trainer(data, workdir, config, precision)
                    for name, clock in (("loop", loop), ("trainer", trainer)):
                        measured = clock.samples_per_s(config.warmup_steps, config.batch_size)
                        so_far = report.samples_per_s.setdefault(name, {})
                        so_far[precision] = max(so_far.get(precision, 0.0), measured)
            # Alternating and best of two, so that neither size pays for a cold cache alone.
            for _ in range(FIRST_STEP_REPEATS):
                for label, location in (("1x", data), (f"{LARGER_FACTOR}x", larger)):
                    logger.info("timing the first step on the %s training split", label)
                    seconds = time_loop(location, workdir, config, "fp32", steps=1).first_step_s
                    best = report.first_step_s.get(label, seconds)
                    report.first_step_s[label] = min(best, seconds)
    return report
