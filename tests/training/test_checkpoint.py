"""Checkpoint files: atomic, pruned, newest valid one wins, corrupt ones are skipped."""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from training.checkpoint import (
    TerminationRequest,
    capture_rng,
    list_checkpoints,
    load_latest_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _state(step: int) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": 0,
        "batches": step,
        "world_size": 1,
        "model": {"w": torch.full((3,), float(step))},
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "rng": [capture_rng(torch.device("cpu"))],
    }


def test_newest_checkpoint_is_loaded_and_old_ones_pruned(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, _state(step), keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [15, 10]
    found = load_latest_checkpoint(tmp_path)
    assert found is not None
    path, state = found
    assert path.name == "checkpoint-000000015.pt" and torch.equal(
        state["model"]["w"], torch.full((3,), 15.0)
    )
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "damage", ["truncated", "garbage", "garbage-start", "empty", "not_a_checkpoint"]
)
@pytest.mark.parametrize("seed", range(8))
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, seed: int
) -> None:
    save_checkpoint(tmp_path, _state(5), keep=3)
    newest = save_checkpoint(tmp_path, _state(10), keep=3)
    data = newest.read_bytes()
    rng = random.Random(seed)
    if damage == "truncated":
        newest.write_bytes(data[: rng.randrange(len(data))])
    elif damage == "garbage":
        newest.write_bytes(rng.randbytes(len(data)))
    elif damage == "garbage-start":  # a zip whose first bytes were overwritten
        newest.write_bytes(rng.randbytes(64) + data[64:])
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        torch.save({"step": 10}, newest)
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 5
    assert "skipping" in caplog.text and newest.name in caplog.text


def test_a_partial_write_is_never_taken_for_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(5), keep=2)
    (tmp_path / ".checkpoint-000000010.pt.partial").write_bytes(b"half written")
    found = load_latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 5


def test_no_checkpoint_directory_means_a_fresh_start(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "none") is None


def test_rng_state_restores_the_same_random_numbers() -> None:
    state = capture_rng(torch.device("cpu"))
    first = torch.rand(4)
    restore_rng(state, torch.device("cpu"))
    assert torch.equal(torch.rand(4), first)


def test_sigterm_becomes_a_request_instead_of_an_exit() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with TerminationRequest() as termination:
        assert not termination.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert termination.requested
    assert signal.getsignal(signal.SIGTERM) is before
