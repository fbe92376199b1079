"""The streaming dataset: sharding without overlap or loss, seeded order, resume, laziness."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import training.data.streaming as streaming
from tests.conftest import build_tiny_model
from training.data import readers
from training.data.readers import DataFormatError
from training.data.streaming import ReviewStream, count_rows, share_rows, split_files


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_model()[1]


def _write(path: Path, rows: int) -> Path:
    with path.open("w") as handle:
        for i in range(rows):
            text = "great product " * (i % 7 + 1)
            handle.write(json.dumps({"text": f"{text} {i}", "stars": i % 5 + 1}) + "\n")
    return path


def _indices(stream: ReviewStream, workers: int = 0) -> list[list[int]]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [batch["index"].tolist() for batch in loader]


@pytest.mark.parametrize("group_by_length", [0, 3])
def test_ranks_and_workers_share_every_line_exactly_once(
    tmp_path: Path, tokenizer: Any, group_by_length: int
) -> None:
    path = _write(tmp_path / "train.jsonl", 103)
    seen: list[int] = []
    for rank in range(3):
        stream = ReviewStream(
            [path], tokenizer, batch_size=4, max_length=32, rank=rank, world_size=3, seed=1
        )
        batches = _indices(stream, workers=2)
        assert all(i % 3 == rank for batch in batches for i in batch)
        seen += [i for batch in batches for i in batch]
    assert sorted(seen) == list(range(103))


def test_a_split_divided_per_node_is_shared_by_each_nodes_processes_exactly_once(
    tmp_path: Path, tokenizer: Any
) -> None:
    """SageMaker's ShardedByS3Key hands each instance only its own objects. Sharded by local
    rank, every line of every node is read once; sharded by global rank (as before), each node
    would skip the lines that belong to the other node's ranks."""
    sizes = (13, 8, 11, 6, 9)
    objects = [_write(tmp_path / f"part-{n}.jsonl", rows) for n, rows in enumerate(sizes)]
    nodes, local = 2, 3
    shares = [objects[node::nodes] for node in range(nodes)]

    def read(node: int, rank: int, world_size: int) -> list[int]:
        stream = ReviewStream(
            shares[node],
            tokenizer,
            batch_size=2,
            max_length=16,
            rank=rank,
            world_size=world_size,
            seed=1,
            group_by_length=2,
        )
        return [i for batch in _indices(stream, workers=1) for i in batch]

    for node in range(nodes):
        node_rows = count_rows(shares[node])
        assert node_rows == sum(sizes[node::nodes])
        per_rank = [read(node, rank, local) for rank in range(local)]
        assert [len(lines) for lines in per_rank] == [
            share_rows(node_rows, rank, local) for rank in range(local)
        ]
        assert sorted(i for lines in per_rank for i in lines) == list(range(node_rows))
        by_global_rank = [read(node, node * local + rank, nodes * local) for rank in range(local)]
        assert sum(map(len, by_global_rank)) < node_rows


def test_order_is_seeded_and_independent_of_worker_count(tmp_path: Path, tokenizer: Any) -> None:
    path = _write(tmp_path / "train.jsonl", 50)

    def order(seed: int, epoch: int, workers: int) -> list[list[int]]:
        stream = ReviewStream(
            [path], tokenizer, batch_size=8, max_length=32, seed=seed, epoch=epoch, buffer_size=16
        )
        return _indices(stream, workers)

    assert order(1, 0, 0) == order(1, 0, 2)
    assert order(1, 0, 0) != order(2, 0, 0)
    assert order(1, 0, 0) != order(1, 1, 0)  # a new order each epoch
    assert sorted(i for b in order(1, 0, 0) for i in b) == list(range(50))


@pytest.mark.parametrize("group_by_length", [0, 3])
def test_resuming_skips_exactly_the_consumed_batches(
    tmp_path: Path, tokenizer: Any, group_by_length: int
) -> None:
    path = _write(tmp_path / "train.jsonl", 60)

    def batches(skip: int, workers: int) -> list[list[int]]:
        stream = ReviewStream(
            [path],
            tokenizer,
            batch_size=7,
            max_length=32,
            seed=3,
            skip_batches=skip,
            group_by_length=group_by_length,
        )
        return _indices(stream, workers)

    full = batches(0, 0)
    assert batches(3, 2) == full[3:]
    assert batches(len(full), 0) == []


def test_batches_are_padded_to_their_longest_review(tmp_path: Path, tokenizer: Any) -> None:
    path = _write(tmp_path / "train.jsonl", 30)
    for batch in ReviewStream([path], tokenizer, batch_size=5, max_length=512, seed=0):
        lengths = batch["attention_mask"].sum(dim=1)
        assert batch["input_ids"].shape[1] == int(lengths.max())
        assert batch["labels"].dtype == torch.long and len(batch["labels"]) == len(lengths)


def test_grouping_by_length_cuts_padding_and_keeps_a_seeded_order(
    tmp_path: Path, tokenizer: Any
) -> None:
    path = tmp_path / "train.jsonl"
    with path.open("w") as handle:
        for i in range(96):
            handle.write(json.dumps({"text": "good " * (1 + (i * 37) % 40), "stars": 4}) + "\n")

    def stream(group: int, epoch: int = 0) -> ReviewStream:
        return ReviewStream(
            [path],
            tokenizer,
            batch_size=8,
            max_length=64,
            seed=5,
            epoch=epoch,
            group_by_length=group,
        )

    def cells(group: int) -> int:
        return sum(batch["input_ids"].numel() for batch in stream(group))

    assert cells(6) < 0.7 * cells(0)
    assert _indices(stream(6)) == _indices(stream(6))
    assert _indices(stream(6)) != _indices(stream(6, epoch=1))


def test_long_reviews_are_truncated_to_max_length(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "good " * 300, "stars": 4}) + "\n")
    (batch,) = list(ReviewStream([path], tokenizer, batch_size=2, max_length=16))
    assert batch["input_ids"].shape == (1, 16) and batch["labels"].tolist() == [3]


def test_training_starts_before_the_file_is_fully_read(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's second half is held back until the first batch has arrived: a stream that
    read the whole file first would wait for it and never see the release."""
    path = _write(tmp_path / "train.jsonl", 80)
    first_batch_seen = threading.Event()
    released_by_consumer: list[bool] = []
    real_open_text = readers.open_text

    def held_back(p: Path) -> Iterator[str]:
        with real_open_text(p) as handle:
            for number, line in enumerate(handle):
                if number == 40:
                    released_by_consumer.append(first_batch_seen.wait(timeout=20))
                yield line

    monkeypatch.setattr(streaming, "open_text", lambda p: _Lines(held_back(p)))
    result: dict[str, Any] = {}

    def consume() -> None:
        iterator = iter(ReviewStream([path], tokenizer, batch_size=4, max_length=16, buffer_size=8))
        result["first"] = next(iterator)["index"].tolist()
        first_batch_seen.set()
        result["rest"] = [i for batch in iterator for i in batch["index"].tolist()]

    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join(timeout=60)
    assert released_by_consumer == [True]
    assert sorted(result["first"] + result["rest"]) == list(range(80))


def test_first_batch_reads_the_same_amount_from_a_ten_times_larger_file(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines_read = 0
    real_open_text = readers.open_text

    def counting_open_text(path: Path) -> Iterator[str]:
        nonlocal lines_read
        with real_open_text(path) as handle:
            for line in handle:
                lines_read += 1
                yield line

    monkeypatch.setattr(streaming, "open_text", lambda p: _Lines(counting_open_text(p)))
    counts = []
    for rows in (500, 5000):
        lines_read = 0
        path = _write(tmp_path / f"{rows}.jsonl", rows)
        next(iter(ReviewStream([path], tokenizer, batch_size=32, max_length=32, buffer_size=100)))
        counts.append(lines_read)
    assert counts[0] == counts[1] <= 100 + 32 + 1


class _Lines:
    """A context manager over an iterator of lines, like the file ``open_text`` returns."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines

    def __enter__(self) -> Iterator[str]:
        return self.lines

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_bad_row_names_the_file_and_the_fix(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine", "stars": 4}\n{"review": "no text field", "stars": 9}\n')
    with pytest.raises(DataFormatError, match=r"review #1 of .*train.jsonl.*data prepare"):
        list(ReviewStream([path], tokenizer, batch_size=4, max_length=16, shuffle=False))


def test_a_split_may_be_a_directory_of_files(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [p.name for p in split_files(tmp_path)] == ["a.jsonl.gz", "b.jsonl"]
    with pytest.raises(DataFormatError, match="does not exist"):
        split_files(tmp_path / "missing")


def _train_on(
    data: Path, out: Path, tiny_model_dir: Path, *extra: str
) -> tuple[int, dict[str, Any] | None]:
    """One epoch of ``python -m training`` in this process: the exit status and the summary."""
    from training.config import parse_args
    from training.run import run_training

    arguments = ["--data", str(data), "--out", str(out), "--model", str(tiny_model_dir)]
    arguments += ["--epochs", "1", "--batch-size", "8", "--num-workers", "0"]
    arguments += ["--checkpoint-every", "0", "--progress", "false", *extra]
    code = run_training(parse_args(arguments))
    metrics = out / "metrics.json"
    return code, json.loads(metrics.read_text()) if metrics.is_file() else None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("summary_rows", "read"),
    [(40, "read more than 40 training rows"), (400, "read 200 training rows")],
)
def test_a_summary_json_that_disagrees_with_the_data_stops_training_and_says_why(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_data_dir: Path,
    caplog: pytest.LogCaptureFixture,
    summary_rows: int,
    read: str,
) -> None:
    """train.jsonl has 200 rows. A stale summary.json that says 40 would plan 5 steps per epoch
    and leave the other 175 rows to a learning rate already decayed to zero; one that says 400
    would never decay it. Both are found while streaming (more rows: as soon as the epoch runs
    past its planned steps; fewer: when it ends) and fail the run (exit 2) with the fix."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    (data / "summary.json").write_text(json.dumps({"splits": {"train": {"rows": summary_rows}}}))
    code, metrics = _train_on(data, tmp_path / "run", tiny_model_dir)
    assert code == 2 and metrics is None
    message = caplog.text
    assert read in message and f"planned for {summary_rows} (summary.json)" in message
    assert "starrating data prepare" in message


@pytest.mark.slow
def test_the_run_summary_counts_the_rows_each_epoch_read(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    (data / "summary.json").write_text(json.dumps({"splits": {"train": {"rows": 200}}}))
    code, metrics = _train_on(data, tmp_path / "run", tiny_model_dir)
    assert code == 0 and metrics is not None
    assert metrics["train_rows_planned"] == 200 and metrics["steps"] == 25
    assert metrics["train_rows_read"] == [
        {"epoch": 1, "rows": 200, "per_rank": [200], "per_node": [200]}
    ]
    # Sharded per node (no summary.json can describe a node's part): the node counts its own.
    (data / "summary.json").unlink()
    code, metrics = _train_on(
        data, tmp_path / "sharded", tiny_model_dir, "--train-sharded-per-node"
    )
    assert code == 0 and metrics is not None
    assert metrics["train_sharded_per_node"] is True
    assert metrics["train_rows_planned"] == 200 and metrics["epochs"] == 1.0
    assert metrics["train_rows_read"][0]["rows"] == 200


@pytest.mark.slow
def test_a_checkpoint_resumes_only_with_the_same_division_of_the_split(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Which process reads which rows depends on --train-sharded-per-node: resuming the other
    way would skip rows of the epoch that were never read and read others twice."""
    out = tmp_path / "run"
    code, _ = _train_on(tiny_data_dir, out, tiny_model_dir, "--train-sharded-per-node")
    assert code == 0 and list((out / "checkpoints").glob("*.pt"))
    code, _ = _train_on(tiny_data_dir, out, tiny_model_dir, "--resume", "--epochs", "2")
    assert code == 2
    assert "written with --train-sharded-per-node true: resume the same way" in caplog.text
