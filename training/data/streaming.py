"""A streaming dataset over prepared ``.jsonl`` splits: read, shuffle and tokenise lazily.

Training starts on the first batch without reading the whole file: lines are read as they are
needed, shuffled through a seeded buffer, grouped into batches and tokenised (one
``starrating.encode_batch`` call per batch, padded to that batch's longest review) inside
DataLoader workers.

Sharding, without overlap or loss: line ``i`` (counting non-blank lines over the split's files)
belongs to rank ``i % world_size``. Where each node was already handed only its own files (a
SageMaker channel with ``ShardedByS3Key``), the files are this node's and the stream is given
the node's share instead: the local rank among the node's processes (torchrun's ``LOCAL_RANK``
of ``LOCAL_WORLD_SIZE``), so no node skips part of what it was given. Each share of lines forms
one seeded sequence of batches, and
batch ``b`` of it (counted from the resume point) is parsed and tokenised by worker
``b % num_workers``. The DataLoader hands the workers' batches out round-robin, so a rank
sees the same batches in the same order whatever the number of workers, and a position in the
stream is just (epoch, batches consumed): resuming skips that many batches without parsing or
tokenising them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import IterableDataset, get_worker_info

from starrating.labels import NUM_LABELS, id_to_star, star_to_id
from starrating.text import encode_batch
from training.data.readers import DataFormatError, open_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
SPLIT_SUFFIXES = (".jsonl", ".jsonl.gz")


def split_files(location: Path) -> list[Path]:
    """The files of a split: the file itself, or the ``.jsonl[.gz]`` files of a directory."""
    if location.is_file():
        return [location]
    if location.is_dir():
        files = sorted(p for p in location.iterdir() if p.name.endswith(SPLIT_SUFFIXES))
        if files:
            return files
        raise DataFormatError(f"{location} holds no .jsonl or .jsonl.gz files")
    raise DataFormatError(f"{location} does not exist")


def known_rows(location: Path) -> int | None:
    """Rows of a split as recorded in ``summary.json`` by ``starrating data prepare``.

    Read instead of counting lines so that nothing scans the file before training starts.
    """
    directory = location.parent if location.is_file() else location
    split = location.name.split(".")[0]
    for summary_path in (directory / "summary.json", directory.parent / "summary.json"):
        if summary_path.is_file():
            try:
                summary = json.loads(summary_path.read_text())
                return int(summary["splits"][split]["rows"])
            except (ValueError, KeyError, TypeError):
                continue
    return None


class RowCountMismatch(DataFormatError):
    """The rows an epoch really read differ from the rows the run was planned for."""


def count_rows(files: Sequence[Path]) -> int:
    """Non-blank lines over ``files``, counted as the stream numbers them (nothing parsed)."""
    return sum(1 for _ in _numbered_lines(files))


def share_rows(rows: int, shard: int, shards: int) -> int:
    """Lines of ``rows`` that go to ``shard`` of ``shards`` (line ``i`` to ``i % shards``)."""
    return len(range(shard, rows, shards))


def read_split(location: Path) -> tuple[list[str], list[int]]:
    """Every review of a split in file order: its texts and their true stars (1-5)."""
    files = split_files(location)
    rows = [_parse(index, line, files) for index, line in _numbered_lines(files)]
    return [text for text, _ in rows], [id_to_star(label) for _, label in rows]


def _numbered_lines(files: Sequence[Path]) -> Iterator[tuple[int, str]]:
    index = 0
    for path in files:
        with open_text(path) as handle:
            for line in handle:
                if line.strip():
                    yield index, line
                    index += 1


def _shuffled(
    items: Iterator[tuple[int, str]], rng: random.Random, size: int
) -> Iterator[tuple[int, str]]:
    """A buffered shuffle: memory bounded by ``size``, a full shuffle for files that fit."""
    buffer: list[tuple[int, str]] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def _parse(index: int, line: str, files: Sequence[Path]) -> tuple[str, int]:
    try:
        record = json.loads(line)
        text, stars = record["text"], record["stars"]
        if not isinstance(text, str):
            raise TypeError("text is not a string")
        return text, star_to_id(int(stars))
    except (ValueError, KeyError, TypeError) as exc:
        names = ", ".join(str(p) for p in files)
        raise DataFormatError(
            f"review #{index} of {names} is not a prepared row "
            f'({{"text": str, "stars": 1-5}}): {exc}. '
            "Run `starrating data prepare` on the raw file."
        ) from exc


def _soft_label(index: int, line: str, label: int, files: Sequence[Path]) -> list[float]:
    """A row's ``distribution`` over 1-5 stars (its raters' shares), or its star one-hot."""
    distribution = json.loads(line).get("distribution")
    if distribution is None:
        return [float(c == label) for c in range(NUM_LABELS)]
    if (
        not isinstance(distribution, list)
        or len(distribution) != NUM_LABELS
        or not all(isinstance(p, int | float) and p >= 0 for p in distribution)
        or abs(sum(distribution) - 1) > 1e-3
    ):
        names = ", ".join(str(p) for p in files)
        raise DataFormatError(
            f"review #{index} of {names}: distribution must be {NUM_LABELS} shares summing to 1"
        )
    return [float(p) for p in distribution]


def _chunks(items: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class StreamPosition:
    """How far training got: batches of ``epoch`` already consumed by every rank."""

    epoch: int = 0
    batches: int = 0


class ReviewStream(IterableDataset[Batch]):
    """Tokenised batches of one rank's share of a split, lazily, in a seeded order.

    ``rank`` and ``world_size`` name the share among the processes that read ``files``: the
    global rank and world size for a split every node holds whole, the local ones for a split
    divided per node.

    Each item is a whole batch (use ``DataLoader(stream, batch_size=None)``) with the
    tokenizer's tensors, ``labels`` and ``index`` (the line number in the split, so evaluation
    can put predictions gathered from several ranks back in order).
    """

    def __init__(
        self,
        files: Sequence[Path],
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int,
        max_length: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        buffer_size: int = 10_000,
        group_by_length: int = 0,
        skip_batches: int = 0,
        soft_labels: bool = False,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.files = list(files)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.buffer_size = max(1, buffer_size)
        self.group_by_length = group_by_length
        self.skip_batches = skip_batches
        self.soft_labels = soft_labels

    def _rank_lines(self) -> Iterator[tuple[int, str]]:
        lines = (
            (i, line) for i, line in _numbered_lines(self.files) if i % self.world_size == self.rank
        )
        if not self.shuffle:
            return lines
        # A string seed is hashed with SHA-512: the same order on every machine and Python run.
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}")
        return _shuffled(lines, rng, self.buffer_size)

    def raw_batches(self) -> Iterator[list[tuple[int, str]]]:
        """This rank's batches of (line number, raw line), before skipping and sharding."""
        if not self.group_by_length:
            yield from _chunks(self._rank_lines(), self.batch_size)
            return
        # Reviews of similar length share a batch, so it carries little padding: sort a window
        # of batches by line length (a proxy for tokens that needs no parsing), then shuffle
        # the batches of the window with the same seeded generator.
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/length")
        window = self.batch_size * self.group_by_length
        for lines in _chunks(self._rank_lines(), window):
            lines.sort(key=lambda item: len(item[1]))
            batches = list(_chunks(iter(lines), self.batch_size))
            rng.shuffle(batches)
            yield from batches

    def collate(self, raw: list[tuple[int, str]]) -> Batch:
        parsed = [_parse(i, line, self.files) for i, line in raw]
        encoded = encode_batch(self.tokenizer, [text for text, _ in parsed], self.max_length)
        batch: Batch = dict(encoded)
        batch["labels"] = torch.tensor([label for _, label in parsed], dtype=torch.long)
        batch["index"] = torch.tensor([i for i, _ in raw], dtype=torch.long)
        if self.soft_labels:
            batch["distribution"] = torch.tensor(
                [
                    _soft_label(i, line, label, self.files)
                    for (i, line), (_, label) in zip(raw, parsed, strict=True)
                ],
                dtype=torch.float32,
            )
        return batch

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for number, raw in enumerate(self.raw_batches()):
            # Counted from the resume point so worker 0 always holds the next batch due.
            if (
                number < self.skip_batches
                or (number - self.skip_batches) % num_workers != worker_id
            ):
                continue
            yield self.collate(raw)
