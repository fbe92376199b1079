"""Readers for review files: each yields ``Review(text, label)`` rows, unvalidated.

Formats (gzip or not, detected by content):
- Amazon customer reviews TSV: ``star_rating``, ``review_headline``, ``review_body``;
- Amazon Reviews 2023 JSONL: ``rating``, ``title``, ``text``;
- any CSV, TSV, JSONL or Parquet file with ``text_col``/``label_col`` naming the columns;
- ``hf:DATASET_ID`` through the ``datasets`` library (needs a reachable hub).
Validation (missing text, labels outside 1-5) happens in ``training.data.prepare`` so bad rows
are counted, not lost silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Review:
    """One row as read: ``text`` may be missing and ``label`` is whatever the file holds.

    Rows of the embedded corpora also carry their sentence ``id``, the corpus (``source``) and
    every rater's rating (``ratings``, -4..+4), so evaluation can find the human agreement."""

    text: str | None
    label: Any
    id: str | None = None
    source: str | None = None
    ratings: tuple[int, ...] | None = None


class DataFormatError(ValueError):
    """A file whose layout the readers do not recognise, with what to do about it."""


def open_text(path: Path) -> IO[str]:
    """Open a text file, transparently gunzipping it."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    raw = gzip.open(path, "rb") if gzipped else path.open("rb")  # noqa: SIM115
    return io.TextIOWrapper(
        raw,  # type: ignore[arg-type]
        encoding="utf-8",
        errors="replace",
        newline="",
    )


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _join(headline: Any, body: Any) -> str | None:
    """Headline and body as one text ("Great. Works well."); None when both are empty."""
    parts = [p.strip() for p in (headline, body) if isinstance(p, str) and p.strip()]
    if not parts:
        return None
    if len(parts) == 2 and not parts[0].endswith((".", "!", "?")):
        parts[0] += "."
    return " ".join(parts)


def _columns(
    keys: set[str], text_col: str | None, label_col: str | None, path: Path
) -> tuple[str, str, str]:
    """(headline, text, label) column names: the Amazon layouts by their fields, else as named."""
    if text_col is None and {"star_rating", "review_body"} <= keys:
        return "review_headline", "review_body", "star_rating"
    if text_col is None and {"rating", "text"} <= keys:
        return "title", "text", "rating"
    text, label = text_col or "text", label_col or "stars"
    missing = {text, label} - keys
    if missing:
        raise DataFormatError(
            f"{path}: no column(s) {sorted(missing)}; found {sorted(keys)}. "
            "Name the columns with --text-col and --label-col."
        )
    return "", text, label


def _rows_from_dicts(
    rows: Iterator[dict[str, Any]], text_col: str | None, label_col: str | None, path: Path
) -> Iterator[Review]:
    columns: tuple[str, str, str] | None = None
    for row in rows:
        if columns is None:
            if not row:  # a broken line before the first good one: counted as bad later
                yield Review(text=None, label=None)
                continue
            columns = _columns(set(row), text_col, label_col, path)
        headline, text, label = columns
        yield Review(text=_join(row.get(headline), row.get(text)), label=row.get(label))


def _read_delimited(path: Path, delimiter: str) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)
    with open_text(path) as handle:
        # Amazon's TSVs are not quoted: a stray quote must not swallow the following lines.
        quoting: Literal[0, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        yield from csv.DictReader(handle, delimiter=delimiter, quoting=quoting)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            # A broken line becomes a row without text so it is counted as bad, not fatal.
            yield row if isinstance(row, dict) else {}


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=10_000):
        yield from batch.to_pylist()


def _read_hub(dataset_id: str, split: str = "train") -> Iterator[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise DataFormatError(
            "hf: sources need the `datasets` library: pip install 'starrating[hub]'"
        ) from exc
    yield from datasets.load_dataset(dataset_id, split=split, streaming=True)


def read_reviews(
    source: str, text_col: str | None = None, label_col: str | None = None
) -> Iterator[Review]:
    """Rows of a file (or ``hf:ID``), whatever their validity."""
    if source.startswith("hf:"):
        yield from _rows_from_dicts(_read_hub(source[3:]), text_col, label_col, Path(source))
        return
    path = Path(source)
    if not path.is_file():
        raise DataFormatError(f"{path} does not exist or is not a file")
    suffix = _suffix(path)
    readers = {
        ".tsv": lambda: _read_delimited(path, "\t"),
        ".csv": lambda: _read_delimited(path, ","),
        ".jsonl": lambda: _read_jsonl(path),
        ".json": lambda: _read_jsonl(path),
        ".parquet": lambda: _read_parquet(path),
    }
    if suffix not in readers:
        raise DataFormatError(
            f"{path}: unknown file type {suffix or '(none)'}; "
            "use .tsv, .csv, .jsonl or .parquet (optionally .gz)"
        )
    yield from _rows_from_dicts(readers[suffix](), text_col, label_col, path)
