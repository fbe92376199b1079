"""Review texts for load tests and benchmarks: real sentences with their true star ratings.

The source is either a directory of prepared splits (``train/validation/test.jsonl`` as written
by ``starrating data prepare``), one ``.jsonl`` file with ``text``/``stars`` fields, or, by
default, the embedded data set split exactly as ``starrating data prepare`` splits it (seed 42).
Imports neither torch nor locust, so locust's processes can load it cheaply.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starrating.settings import CoreSettings

SPLITS = ("train", "validation", "test")


class ReviewSourceError(ValueError):
    """A review source that holds no usable ``{"text", "stars"}`` rows."""


@dataclass(frozen=True)
class ReviewSet:
    """Texts with their true stars, in file order."""

    texts: list[str]
    stars: list[int]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.stars):
            raise ValueError("texts and stars must have the same length")

    def __len__(self) -> int:
        return len(self.texts)


def _read_jsonl(path: Path) -> ReviewSet:
    texts: list[str] = []
    stars: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, star = row["text"], int(row["stars"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ReviewSourceError(
                    f"{path}:{number} is not a prepared review row ({{'text', 'stars'}}): {exc}"
                ) from exc
            if isinstance(text, str) and text.strip():
                texts.append(text)
                stars.append(star)
    if not texts:
        raise ReviewSourceError(f"{path} holds no reviews")
    return ReviewSet(texts, stars)


def prepare_embedded(out_dir: Path) -> Path:
    """The embedded data set split into ``out_dir`` exactly as ``starrating data prepare``."""
    from training.data.embedded import read_embedded
    from training.data.prepare import prepare

    prepare(read_embedded(CoreSettings().cache_dir), out_dir, source="default", seed=42)
    return out_dir


def load_reviews(source: Path | None = None, splits: tuple[str, ...] = SPLITS) -> ReviewSet:
    """Reviews from ``source`` (splits dir or ``.jsonl`` file; None = embedded data).

    ``splits`` selects which splits of a directory (or of the embedded data) to read, in order.
    """
    if source is not None and source.is_file():
        return _read_jsonl(source)
    if source is not None and not source.is_dir():
        raise ReviewSourceError(
            f"{source} does not exist: give a directory written by `starrating data prepare` "
            "or a .jsonl file with text/stars fields"
        )
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ReviewSourceError(f"unknown splits {sorted(unknown)}; choose from {SPLITS}")
    with tempfile.TemporaryDirectory(prefix="starrating-reviews-") as tmp:
        directory = source if source is not None else prepare_embedded(Path(tmp))
        missing = [s for s in splits if not (directory / f"{s}.jsonl").is_file()]
        if missing:
            raise ReviewSourceError(
                f"{directory} lacks {', '.join(f'{s}.jsonl' for s in missing)}; "
                "prepare it with `starrating data prepare --out DIR`"
            )
        parts = [_read_jsonl(directory / f"{s}.jsonl") for s in splits]
    return ReviewSet(
        [t for part in parts for t in part.texts], [s for part in parts for s in part.stars]
    )
