"""Checkpoints that survive spot interruptions: atomic writes, newest valid one wins.

A checkpoint is one ``torch.save`` file ``checkpoint-<step>.pt`` holding model, optimizer,
scheduler and scaler state, the RNG states of every rank, the data position and the bookkeeping
(history, rules, tracking run id) needed to continue as if never stopped. It is written to a
temporary name, flushed to disk and renamed, so a kill mid-write leaves the previous checkpoint
intact. Loading takes the newest one that reads back completely and skips corrupt or partial
ones with a warning. ``TerminationRequest`` turns SIGTERM (a spot interruption warning) into a
flag the training loop checks between steps.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
REQUIRED_KEYS = frozenset(
    {
        "format",
        "step",
        "epoch",
        "batches",
        "world_size",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
    }
)


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit this run (e.g. another world size)."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"checkpoint-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := _NAME.match(path.name))
    ]
    return sorted(found, reverse=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of its step; keep the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, int(state["step"]))
    partial = final.with_name(f".{final.name}.partial")
    with partial.open("wb") as handle:
        torch.save({"format": FORMAT_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, final)
    _fsync_directory(directory)
    for _, old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    logger.info("checkpoint written: %s", final)
    return final


def load_latest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads completely, or None; corrupt ones are skipped."""
    for _, path in list_checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            # Damaged bytes lead torch.load's unpickler into any error at all (EOFError,
            # UnpicklingError, BadZipFile, but also KeyError, IndexError, ...): not loadable.
            logger.warning("skipping unreadable checkpoint %s: %r", path, exc)
            continue
        missing = REQUIRED_KEYS - set(state) if isinstance(state, dict) else REQUIRED_KEYS
        if missing:
            logger.warning("skipping incomplete checkpoint %s: missing %s", path, sorted(missing))
            continue
        if state["format"] != FORMAT_VERSION:
            logger.warning("skipping checkpoint %s of format %s", path, state["format"])
            continue
        return path, state
    return None


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's random number generator states."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class TerminationRequest:
    """While entered, SIGTERM sets ``requested`` instead of killing the process."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            logger.warning("SIGTERM received: writing a checkpoint after this step, then exiting")
        self.requested = True

    def __enter__(self) -> TerminationRequest:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def ignore_sigterm(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a SIGTERM sent to the whole process group must not kill
    the workers, or the main process would fail before its final checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
