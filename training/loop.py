"""The training loop: DDP, mixed precision, checkpoints, rules, tracking, evaluation.

One code path for every setting: one process or many (torchrun), CPU or GPU, fp32/bf16/fp16;
each optimizer step is ``training.step``'s (loss, parameter groups, AdamW, scaler, autocast),
the data plan ``training.run_plan``'s and a checkpoint's contents ``training.checkpoint_schema``'s.
Processes move in lockstep: before each step they agree (one small CPU all-reduce) whether any
of them still has a batch and whether any must stop. A process whose share of the epoch ran out
one batch early steps with its previous batch at zero weight, so no review is dropped and DDP's
all-reduce never waits on a process that left. Only rank 0 logs, tracks and writes files;
what it writes when the steps are over (calibration, summary, model, plots) is
``training.report``'s.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from starrating.models import load_pretrained
from training import checkpoint as ckpt
from training.checkpoint_schema import (
    Checkpointed,
    RunState,
    check_resumable,
    checkpoint_contents,
    restore_run,
)
from training.config import TrainConfig
from training.data.streaming import (
    Batch,
    ReviewStream,
    StreamPosition,
    split_files,
)
from training.distributed import (
    DistributedContext,
    agree_any,
    all_gather_objects,
    barrier,
    distributed_context,
    sum_across,
)
from training.evaluate import Predictions, evaluate_predictions, predict
from training.metric_lines import log_metrics
from training.progress import TrainingProgress
from training.report import plot_run, save_run, summarise_run, track_run
from training.rules import TrainingRules
from training.run_plan import Plan, TrainShare, count_epoch_rows
from training.step import TrainingStep, resolve_precision
from training.tracking import RunTracker

logger = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 64


class TrainingInterrupted(Exception):
    """SIGTERM stopped training after a checkpoint was written; ``--resume`` continues."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted; checkpoint {checkpoint}")
        self.checkpoint = checkpoint


def worker_context() -> BaseContext:
    """Where DataLoader workers come from: a fork server started from a clean process.

    Forking a trainer directly can deadlock the child: Gloo/NCCL and DataLoader threads may
    hold locks at the moment of the fork (seen here as a validation worker that never
    answered). The server preloads torch and the tokenizers, so each fork is still cheap.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["training.data.streaming", "transformers"])
    return context


def build_scheduler(
    optimizer: torch.optim.Optimizer, plan: Plan
) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    schedule: torch.optim.lr_scheduler.LRScheduler
    if plan.total_steps is None:
        logger.warning(
            "the number of training rows is unknown (no summary.json beside the data): the "
            "learning rate stays constant after warmup; pass --max-steps for a decaying schedule"
        )
        schedule = get_constant_schedule_with_warmup(optimizer, plan.warmup_steps)
    else:
        schedule = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
            optimizer, plan.warmup_steps, plan.total_steps
        )
    return schedule


@dataclass(frozen=True)
class IntervalStats:
    loss: float
    samples: int
    samples_per_sec: float


class LossInterval:
    """Training loss and throughput summed between two log lines, on the device so that adding
    a step's loss never waits for the GPU."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps = 0
        self.samples = 0
        self.started = time.monotonic()
        self.last_loss = float("nan")

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples

    def flush(self, ctx: DistributedContext) -> IntervalStats:
        """Totals over every rank (a collective: all ranks call it together), then reset.
        With no step since the last flush the previous loss stands."""
        loss, steps, samples = sum_across(ctx, float(self.loss), self.steps, self.samples)
        if steps:
            self.last_loss = loss / steps
        seconds = max(time.monotonic() - self.started, 1e-9)
        self.loss.zero_()
        self.steps = self.samples = 0
        self.started = time.monotonic()
        return IntervalStats(self.last_loss, int(samples), samples / seconds)

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "steps": self.steps,
            "samples": self.samples,
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.fill_(state["loss"])
        self.steps, self.samples = state["steps"], state["samples"]
        self.last_loss = state["last_loss"]


class Trainer:
    """Trains one configured run inside an initialised (or single) process group."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext) -> None:
        self.config = config
        self.ctx = ctx
        self.device = ctx.device
        self.precision = resolve_precision(config.precision, ctx.device)
        train_location = config.split_path("train")
        validation_location = config.split_path("validation")
        if train_location is None or validation_location is None:
            config.validate()  # raises the explanatory error
            raise AssertionError("unreachable")
        self.train_files = split_files(train_location)
        self.train_share = TrainShare.make(config, ctx, self.train_files)
        self.validation_files = split_files(validation_location)
        test_location = config.split_path("test")
        self.test_files = split_files(test_location) if test_location else None
        self.plan = Plan.make(config, ctx, train_location, self.train_share)

        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # ours is the one progress display
        # Same seed on every rank: identical head init (DDP also broadcasts rank 0's weights).
        torch.manual_seed(config.seed)
        model, self.tokenizer = load_pretrained(config.model, config.max_length)
        self.model = model
        self.model.to(self.device)  # type: ignore[arg-type]
        self.ddp: torch.nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            if ctx.distributed
            else self.model
        )
        self.training_step = TrainingStep.create(
            self.model, config, self.device, self.precision, module=self.ddp
        )
        self.optimizer = self.training_step.optimizer
        self.scaler = self.training_step.scaler
        self.autocast = self.training_step.autocast  # evaluation's forward passes too
        self.scheduler = build_scheduler(self.optimizer, self.plan)
        self.rules = TrainingRules()
        self.state = RunState()
        self.tracker = RunTracker(config, enabled=ctx.is_main and config.tracking)
        # Dropout differs per rank, as it would with one process over the global batch.
        torch.manual_seed(config.seed + 1000 * (ctx.rank + 1))
        self.last_validation: tuple[int, Predictions] | None = None
        self.interval = LossInterval(self.device)
        self.started = time.monotonic()

    # -- checkpoints -------------------------------------------------------------------------

    def _resume(self) -> Path | None:
        found = ckpt.load_latest_checkpoint(self.config.checkpoints)
        if found is None:
            logger.info("no checkpoint in %s: starting from scratch", self.config.checkpoints)
            return None
        path, saved = found
        check_resumable(
            path,
            saved,
            world_size=self.ctx.world_size,
            train_sharded_per_node=self.train_share.per_node,
        )
        self.state = restore_run(
            saved, self._checkpointed(), rank=self.ctx.rank, device=self.device
        )
        logger.info(
            "resumed from %s: step %d, epoch %d, batch %d",
            path,
            self.state.step,
            self.state.position.epoch + 1,
            self.state.position.batches,
        )
        return path

    def _checkpointed(self) -> Checkpointed:
        return Checkpointed(
            self.model, self.optimizer, self.scheduler, self.scaler, self.rules, self.interval
        )

    def _checkpoint(self) -> Path | None:
        """Every rank hands in its RNG state; rank 0 writes the checkpoint."""
        elapsed = time.monotonic() - self.started
        rng = all_gather_objects(self.ctx, ckpt.capture_rng(self.device))
        interval = all_gather_objects(self.ctx, self.interval.state_dict())
        epoch_rows = all_gather_objects(self.ctx, self.state.epoch_rows)
        path = None
        if self.ctx.is_main:
            contents = checkpoint_contents(
                self.state,
                self._checkpointed(),
                world_size=self.ctx.world_size,
                train_sharded_per_node=self.train_share.per_node,
                train_time_s=self.state.train_time_s + elapsed,
                rng=rng,
                interval=interval,
                epoch_rows=epoch_rows,
            )
            path = ckpt.save_checkpoint(
                self.config.checkpoints, contents, keep=self.config.keep_checkpoints
            )
        barrier(self.ctx)
        return path

    # -- data ----------------------------------------------------------------------------------

    def _loader(self, stream: ReviewStream, workers: int) -> DataLoader[Batch]:
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            multiprocessing_context=worker_context() if workers else None,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ckpt.ignore_sigterm if workers else None,
            # Its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run's dropout would differ from an uninterrupted one's.
            generator=torch.Generator(),
        )

    def _train_batches(self, epoch: int, skip: int) -> Iterator[Batch]:
        share = self.train_share
        stream = ReviewStream(
            share.files,
            self.tokenizer,
            batch_size=self.plan.local_batch,
            max_length=self.config.max_length,
            rank=share.shard,
            world_size=share.shards,
            seed=self.config.seed,
            epoch=epoch,
            buffer_size=self.config.shuffle_buffer,
            group_by_length=self.config.group_by_length,
            skip_batches=skip,
            soft_labels=self.config.soft_labels,
        )
        return iter(self._loader(stream, self.config.num_workers))

    def _predict(self, files: list[Path]) -> Predictions:
        stream = ReviewStream(
            files,
            self.tokenizer,
            batch_size=EVAL_BATCH_SIZE,
            max_length=self.config.max_length,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            shuffle=False,
        )
        batches = self._loader(stream, min(self.config.num_workers, 1))
        return predict(self.model, batches, self.ctx, self.autocast)

    # -- the loop --------------------------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        """Keep a metrics entry for the curves, log its metric line and track it (rank 0)."""
        self.state.history.append(entry)
        if self.ctx.is_main:
            log_metrics(entry)
            metrics = {k: v for k, v in entry.items() if k not in ("step", "epoch")}
            self.tracker.log_metrics(metrics, step=entry["step"])

    def _validate(self, epoch: int, train_loss: float) -> list[str]:
        predictions = self._predict(self.validation_files)
        self.last_validation = (self.state.step, predictions)
        metrics = evaluate_predictions(predictions)
        self._record(
            {"step": self.state.step, "epoch": epoch + 1}
            | {
                f"validation_{k}": metrics[k]
                for k in ("loss", "accuracy", "macro_f1", "mae", "qwk")
            }
        )
        return self.rules.observe_eval(self.state.step, train_loss, metrics["loss"])

    def _move(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def run(self) -> dict[str, Any] | None:
        """Train, evaluate, calibrate and save; the final summary on rank 0, None elsewhere."""
        config, ctx = self.config, self.ctx
        if config.resume:
            self._resume()
        if ctx.is_main:
            config.save(config.out / "config.json")
        run_id = self.tracker.start(self.state.tracking_run_id)
        if run_id is not None and self.state.tracking_run_id is None:
            self.state.tracking_run_id = run_id
            self.tracker.log_params(self._params())
        logger.info(
            "training %s on %s: %d process(es), %s, global batch %d, %s steps",
            config.model,
            self.device,
            ctx.world_size,
            self.precision,
            config.batch_size,
            self.plan.total_steps or "unknown",
        )
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.progress = TrainingProgress(
            enabled=ctx.is_main and config.progress,
            total=self.plan.total_steps,
            completed=self.state.step,
        )
        self.started = time.monotonic()
        self.model.train()  # from_pretrained hands the model over in eval mode (no dropout)
        try:
            with ckpt.TerminationRequest() as self.termination, self.progress:
                stop_reason = self._epochs()
            self.state.train_time_s += time.monotonic() - self.started
            return self._finish(stop_reason)
        except TrainingInterrupted:
            self.tracker.end("KILLED")
            raise
        except BaseException:
            self.tracker.end("FAILED")
            raise

    def _epochs(self) -> str:
        """Run epochs until done; return why training stopped (completed/max_steps/rules)."""
        config = self.config
        epoch = self.state.position.epoch
        while config.max_steps is not None or epoch < config.epochs:
            outcome = self._epoch(epoch, skip=self.state.position.batches)
            if outcome == "terminated":
                raise TrainingInterrupted(self._checkpoint())
            if outcome == "epoch_end":
                self._count_epoch_rows(epoch)
            train_loss = self.interval.flush(self.ctx).loss
            if self._rules_say_stop(self._validate(epoch, train_loss)):
                outcome = "rules"
            if outcome != "epoch_end":
                return outcome
            epoch += 1
            self.state.position = StreamPosition(epoch, 0)
            self._checkpoint()
        return "completed"

    def _epoch(self, epoch: int, skip: int) -> str:
        """One pass over this rank's share of the training split, from batch ``skip`` on.

        Returns "epoch_end", "max_steps", "rules" (--early-stop) or "terminated" (SIGTERM)."""
        config, ctx, state = self.config, self.ctx, self.state
        batches = self._train_batches(epoch, skip)
        state.position = StreamPosition(epoch, skip)
        if skip == 0:
            state.epoch_rows = 0
        self.progress.epoch(epoch + 1, config.epochs if config.max_steps is None else None)
        placeholder: Batch | None = None
        rule_stop = False
        while True:
            if config.max_steps is not None and state.step >= config.max_steps:
                return "max_steps"  # also when resuming from the last step's checkpoint
            batch = next(batches, None)
            has_batch, stop = agree_any(ctx, batch is not None, self.termination.requested)
            if stop:
                return "terminated"
            if not has_batch:
                return "epoch_end"
            if self.plan.steps_per_epoch is not None and (
                state.position.batches >= self.plan.steps_per_epoch
            ):
                raise self.plan.rows_mismatch(self.train_files, f"more than {self.plan.rows}")
            weight = 1.0
            if batch is None:  # this rank's share ran out a batch early: step along at weight 0
                batch, weight = placeholder, 0.0
            assert batch is not None
            placeholder = batch
            batch = self._move(batch)
            loss = self.training_step.take(batch, weight)
            self.scheduler.step()
            state.step += 1
            state.position = StreamPosition(epoch, state.position.batches + 1)
            if weight:
                self.interval.add(loss, len(batch["labels"]))
                if state.epoch_rows is not None:
                    state.epoch_rows += len(batch["labels"])
            self.progress.advance()
            if state.step % config.log_every == 0:
                rule_stop |= self._log_training(epoch)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                self._checkpoint()
            if rule_stop:
                return "rules"

    def _count_epoch_rows(self, epoch: int) -> None:
        """Sum the rows each process read in the epoch just finished, keep them for the run
        summary, and fail when they are not the rows the run was planned for."""
        record = count_epoch_rows(self.ctx, epoch, self.state.epoch_rows)
        if record is None:
            return  # resumed mid-epoch from a checkpoint that did not count
        self.state.rows_read.append(record)
        self.plan.check_epoch_rows(record["rows"], self.train_files)

    def _log_training(self, epoch: int) -> bool:
        """Log the interval's training metrics; True when a rule says stop."""
        stats = self.interval.flush(self.ctx)
        self.state.samples += stats.samples
        self._record(
            {
                "step": self.state.step,
                "epoch": epoch + 1,
                "train_loss": stats.loss,
                "learning_rate": self.scheduler.get_last_lr()[0],
                "samples_per_sec": stats.samples_per_sec,
            }
        )
        self.progress.show(loss=stats.loss, samples_per_sec=stats.samples_per_sec)
        return self._rules_say_stop(self.rules.observe_train(self.state.step, stats.loss))

    def _rules_say_stop(self, findings: list[str]) -> bool:
        for finding in findings:
            if self.ctx.is_main:
                logger.warning("training rule: %s", finding)
        return bool(findings) and self.config.early_stop

    def _params(self) -> dict[str, Any]:
        params = self.config.to_json()
        params |= {
            "train_files": ",".join(map(str, self.train_files)),
            "validation_files": ",".join(map(str, self.validation_files)),
            "test_files": ",".join(map(str, self.test_files or [])),
            "world_size": self.ctx.world_size,
            "resolved_precision": self.precision,
            "device": str(self.device),
            "total_steps": self.plan.total_steps,
        }
        return params

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self, stop_reason: str | None) -> dict[str, Any] | None:
        """The final predictions on every rank, then rank 0's report; its summary on rank 0."""
        validation, test = self._final_predictions()
        summary = self._report(validation, test, stop_reason) if self.ctx.is_main else None
        barrier(self.ctx)
        return summary

    def _final_predictions(self) -> tuple[Predictions, Predictions | None]:
        """Validation (the last evaluation's, when it was at this step) and test predictions."""
        if self.last_validation is not None and self.last_validation[0] == self.state.step:
            validation = self.last_validation[1]
        else:
            validation = self._predict(self.validation_files)
        test = self._predict(self.test_files) if self.test_files else None
        return validation, test

    def _report(
        self, validation: Predictions, test: Predictions | None, stop_reason: str | None
    ) -> dict[str, Any]:
        """Calibrate, summarise, save, plot and track the finished run (rank 0)."""
        out, history = self.config.out, self.state.history
        result = summarise_run(validation, test, self._run_facts(stop_reason))
        saved = save_run(out, result, history, self.model, self.tokenizer, self.config.max_length)
        plots = plot_run(out, result, history)
        log_metrics(result.final_metrics)
        track_run(self.tracker, result, saved, plots, step=self.state.step)
        logger.info(
            "saved the model to %s and the evaluation to %s", saved.model_dir, out / "metrics.json"
        )
        return result.summary

    def _run_facts(self, stop_reason: str | None) -> dict[str, Any]:
        """How the run went and where it ran, for its summary."""
        steps_per_epoch = self.plan.steps_per_epoch
        return {
            "rules": self.rules.statuses(),
            "stopped": stop_reason or "completed",
            "steps": self.state.step,
            "epochs": round(self.state.step / steps_per_epoch, 2) if steps_per_epoch else None,
            "train_rows_planned": self.plan.rows,
            "train_rows_read": self.state.rows_read,
            "train_sharded_per_node": self.train_share.per_node,
            "train_time_s": round(self.state.train_time_s, 1),
            "world_size": self.ctx.world_size,
            "precision": self.precision,
            "device": str(self.device),
            "model": self.config.model,
        }


def train(config: TrainConfig) -> dict[str, Any] | None:
    """Run training in this process (joining torchrun's group when launched by it)."""
    config.validate()
    with distributed_context() as ctx:
        return Trainer(config, ctx).run()
