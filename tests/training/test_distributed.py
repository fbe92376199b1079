"""Two CPU processes (Gloo) against one: same gradients, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from serving.addresses import free_port
from starrating.text import encode_batch
from tests.conftest import build_tiny_model
from training.checkpoint import list_checkpoints
from training.distributed import distributed_context
from training.step import autocast_for, forward_backward

pytestmark = pytest.mark.slow

TEXTS = [
    "i loved it",
    "really bad product",
    "it's ok i guess",
    "works well",
    "terrible",
    "excellent value",
    "not very good",
    "average",
]
LABELS = [4, 0, 2, 3, 0, 4, 1, 2]


def _gradients(texts: list[str], labels: list[int], ddp: bool) -> dict[str, torch.Tensor]:
    model, tokenizer = build_tiny_model(seed=0)
    model.eval()  # no dropout, so one process and two see the same function
    batch = dict(encode_batch(tokenizer, texts))
    batch["labels"] = torch.tensor(labels)
    module: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    forward_backward(
        module,
        batch,
        autocast_for(torch.device("cpu"), "fp32"),
        torch.amp.GradScaler("cpu", enabled=False),
    )
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _as_torchrun_would_start(rank: int, world_size: int, port: int) -> None:
    os.environ |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    _as_torchrun_would_start(rank, world_size, port)
    with distributed_context() as ctx:
        assert ctx.world_size == world_size and ctx.is_main == (rank == 0)
        share = slice(rank * 4, (rank + 1) * 4)
        grads = _gradients(TEXTS[share], LABELS[share], ddp=True)
        torch.save(grads, Path(out) / f"rank{rank}.pt")


def test_two_process_gradients_equal_one_process_on_the_same_global_batch(
    tmp_path: Path,
) -> None:
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True
    )
    single = _gradients(TEXTS, LABELS, ddp=False)
    for rank in (0, 1):
        ddp = torch.load(tmp_path / f"rank{rank}.pt")
        assert ddp.keys() == single.keys()
        for name, grad in single.items():
            torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _leave_worker(rank: int, world_size: int, port: int, out: str) -> None:
    _as_torchrun_would_start(rank, world_size, port)
    with distributed_context():
        if rank == 0:  # rank 0 still writes the model while the others are done
            time.sleep(1.5)
            (Path(out) / "rank0-done").write_text(str(time.time()))
    (Path(out) / f"rank{rank}-left").write_text(str(time.time()))


def test_a_process_that_finishes_first_waits_for_the_others_before_leaving(
    tmp_path: Path,
) -> None:
    # Leaving early would close its connections under the others (Gloo aborts them then).
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _leave_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True
    )
    rank0_done = float((tmp_path / "rank0-done").read_text())
    assert float((tmp_path / "rank1-left").read_text()) >= rank0_done


def _environment() -> dict[str, str]:
    return os.environ | {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _train_args(data: Path, model: Path, out: Path) -> list[str]:
    return [
        "--data",
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--max-steps",
        "60",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "4",
        "--log-every",
        "4",
        "--num-workers",
        "1",
        "--seed",
        "7",
    ]


def _torchrun(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "training",
        *args,
        "--progress",
        "false",
    ]
    with log.open("ab") as handle:
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=_environment(),
            start_new_session=True,
        )


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL torchrun and the trainers it started (each in a session of its own), as a lost
    spot instance would: no signal handler runs."""
    parent = psutil.Process(process.pid)
    victims = [parent, *parent.children(recursive=True)]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    process.wait(timeout=30)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    # Reference: uninterrupted, launched the way users do (starrating train starts torchrun).
    reference = tmp_path / "reference"
    starrating = Path(sys.executable).parent / "starrating"
    done = subprocess.run(
        [
            str(starrating),
            "train",
            "--nproc-per-node",
            "2",
            *_train_args(tiny_data_dir, tiny_model_dir, reference),
        ],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    process = _torchrun(_train_args(tiny_data_dir, tiny_model_dir, killed), log)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        steps = [step for step, _ in list_checkpoints(killed / "checkpoints")]
        if steps and steps[0] >= 8:
            break
        time.sleep(0.02)
    _kill_tree(process)

    assert not (killed / "model").exists(), "the run finished before it could be killed"
    checkpoints = list_checkpoints(killed / "checkpoints")
    assert len(checkpoints) == 2 and checkpoints[0][0] < 60
    # The newest checkpoint is damaged too: resume must fall back to the one before.
    newest = checkpoints[0][1]
    newest.write_bytes(newest.read_bytes()[:1000])

    resumed = _torchrun([*_train_args(tiny_data_dir, tiny_model_dir, killed), "--resume"], log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert f"skipping unreadable checkpoint {newest}" in text
    assert f"resumed from {checkpoints[1][1]}" in text

    expected, actual = _weights(reference), _weights(killed)
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    summary = {
        k: json.loads((run / "metrics.json").read_text())
        for k, run in (("reference", reference), ("resumed", killed))
    }
    for key in ("accuracy", "mae", "qwk", "temperature", "steps"):
        assert summary["resumed"][key] == summary["reference"][key], key


def _first_line(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    out = tmp_path / "run"
    args = _train_args(tiny_data_dir, tiny_model_dir, out)
    args[args.index("--max-steps") + 1] = "100000"
    args[args.index("--checkpoint-every") + 1] = "0"
    process = subprocess.Popen(
        [sys.executable, "-m", "training", *args, "--progress", "false"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_environment(),
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:  # wait until it is training
        lines.append(line)
        if "train_loss=" in line:
            break
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 143, output[-3000:]
    assert "Traceback" not in output
    stopped = _first_line(output, "stopped by SIGTERM")
    assert "--resume" in stopped
    (step, path), *_ = list_checkpoints(out / "checkpoints")
    assert str(path) in stopped and step >= 4
    assert not (out / "model").exists()


def test_sigterm_to_starrating_train_stops_every_process_at_one_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    """`starrating train --nproc-per-node 2` passes SIGTERM on through torchrun; both trainers
    stop after the same step and rank 0 writes the checkpoint."""
    out = tmp_path / "run"
    args = _train_args(tiny_data_dir, tiny_model_dir, out)
    args[args.index("--max-steps") + 1] = "100000"
    starrating = Path(sys.executable).parent / "starrating"
    process = subprocess.Popen(
        [str(starrating), "train", "--nproc-per-node", "2", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_environment(),
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "train_loss=" in line:
            break
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 143, output[-3000:]
    assert "[rank 0] training.checkpoint: SIGTERM received" in output
    assert "[rank 1] training.checkpoint: SIGTERM received" in output
    assert "run the same command with --resume" in " ".join(output.split())
    (step, path), *_ = list_checkpoints(out / "checkpoints")
    assert f"stopped by SIGTERM; checkpoint {path}" in output and step >= 4
