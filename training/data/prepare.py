"""``starrating data prepare``: validate rows and write stratified train/validation/test splits.

Splitting streams: each star class keeps a seeded bag of split slots (refilled with the
smallest block that holds the requested fractions exactly, then shuffled), so splits are
stratified to within one block per class, deterministic for a seed, and memory stays flat on
multi-GB review dumps.
Output: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` with ``{"text", "stars"}`` per line,
and ``summary.json``. Rows that know where they come from also carry ``id`` (the sentence id in
its corpus), ``source`` (the corpus), ``ratings`` (every rater's rating, -4..+4) and
``distribution`` (the share of raters per star: a soft label for ``--soft-labels``).

Extra training rows (``extra_train``: other domains) go to the training split only and draw no
split slots, so validation and test are exactly what they are without them; the training split
is then shuffled (seeded) so a streaming shuffle buffer sees every source throughout an epoch.
With ``extra_ratio`` R only a seeded sample of round(R x main training rows) extra rows is kept,
drawn from that shuffled split and shuffled again with the same generator: the recipe
docs/training.md measured on a file made that way from the full split, reproduced row for row.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from starrating.labels import STARS
from starrating.text import normalize_text
from training.data.embedded import ratings_distribution
from training.data.readers import Review

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MAX_BLOCK = 100
# A training row held before it is written: whether it is an extra row, and the row.
HeldRow = tuple[bool, dict[str, Any]]


@dataclass
class PrepareSummary:
    """What was read, what was kept and where it went."""

    source: str
    seed: int
    rows_read: int = 0
    rows_written: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {"missing_text": 0, "bad_label": 0})
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    # Rows per source (corpus) and split, where rows say their source.
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    # Extra training rows kept per main training row (a seeded sample); None: all of them.
    extra_ratio: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_stars(value: Any) -> int | None:
    """An integral 1-5 rating from ``5``, ``"5"``, ``5.0`` or ``"5.0"``; otherwise None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number) or int(number) not in STARS:
        return None
    return int(number)


class _SplitBags:
    """Per-class bags of split names, refilled with the split fractions and shuffled."""

    def __init__(self, fractions: dict[str, float], seed: int) -> None:
        shares = {
            name: Fraction(frac).limit_denominator(MAX_BLOCK) for name, frac in fractions.items()
        }
        # The smallest block that holds every share exactly: 10 for 0.1/0.1, 20 for 0.15.
        block = math.lcm(*(share.denominator for share in shares.values()))
        counts = {name: int(share * block) for name, share in shares.items()}
        counts["train"] = block - sum(counts.values())
        self._block = [name for name, n in counts.items() for _ in range(n)]
        self._rng = random.Random(seed)
        self._bags: dict[int, list[str]] = {}

    def draw(self, stars: int) -> str:
        bag = self._bags.setdefault(stars, [])
        if not bag:
            bag.extend(self._block)
            self._rng.shuffle(bag)
        return bag.pop()


def _record(review: Review, text: str, stars: int) -> dict[str, Any]:
    record: dict[str, Any] = {"text": text, "stars": stars}
    if review.id is not None:
        record["id"] = review.id
    if review.source is not None:
        record["source"] = review.source
    if review.ratings:
        record["ratings"] = list(review.ratings)
        record["distribution"] = ratings_distribution(review.ratings)
    return record


def _sample_extra(train: list[HeldRow], ratio: float, seed: int) -> list[HeldRow]:
    """All main rows of ``train`` and a seeded sample of round(``ratio`` x main rows) of its
    extra rows, shuffled; all of ``train`` where that asks for as many extra rows as there are."""
    main = [row for row in train if not row[0]]
    extra = [row for row in train if row[0]]
    wanted = round(ratio * len(main))
    if wanted >= len(extra):
        logger.info(
            "extra training rows: ratio %g x %d training rows asks for %d, there are %d: "
            "keeping all of them",
            ratio,
            len(main),
            wanted,
            len(extra),
        )
        return train
    logger.info(
        "extra training rows: keeping a seeded sample of %d of %d (ratio %g x %d training rows)",
        wanted,
        len(extra),
        ratio,
        len(main),
    )
    rng = random.Random(seed)
    sampled = main + rng.sample(extra, wanted)
    rng.shuffle(sampled)
    return sampled


def _write_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def prepare(
    reviews: Iterable[Review],
    out_dir: Path,
    *,
    source: str,
    seed: int = 42,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    on_row: Callable[[], None] | None = None,
    extra_train: Iterable[Review] = (),
    extra_ratio: float | None = None,
) -> PrepareSummary:
    """Validate ``reviews`` and write the splits under ``out_dir``; ``extra_train`` rows are
    validated the same way and added to the training split only: all of them, or with
    ``extra_ratio`` a seeded sample of round(``extra_ratio`` x main training rows)."""
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError("validation and test fractions must be >= 0 and sum to less than 1")
    if extra_ratio is not None and not (extra_ratio > 0 and math.isfinite(extra_ratio)):
        raise ValueError(f"the extra rows' ratio must be a number above 0, not {extra_ratio}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(source=source, seed=seed, extra_ratio=extra_ratio)
    bags = _SplitBags({"validation": validation_fraction, "test": test_fraction}, seed)
    counts: dict[str, Counter[int]] = {name: Counter() for name in SPLITS}
    by_source: dict[str, Counter[str]] = {}
    # With extra rows the training split is shuffled before it is written, so it is held here.
    extra = iter(extra_train)
    held_train: list[HeldRow] | None = None
    first_extra = next(extra, None)
    if first_extra is not None:
        held_train = []
        extra = itertools.chain([first_extra], extra)

    def valid(review: Review) -> dict[str, Any] | None:
        summary.rows_read += 1
        if on_row is not None:
            on_row()
        text = normalize_text(review.text) if isinstance(review.text, str) else ""
        if not text:
            summary.skipped["missing_text"] += 1
            return None
        stars = parse_stars(review.label)
        if stars is None:
            summary.skipped["bad_label"] += 1
            return None
        return _record(review, text, stars)

    def count(split: str, record: dict[str, Any]) -> None:
        counts[split][record["stars"]] += 1
        if "source" in record:
            by_source.setdefault(record["source"], Counter())[split] += 1
        summary.rows_written += 1

    handles = {name: (out_dir / f"{name}.partial").open("w", encoding="utf-8") for name in SPLITS}
    try:
        for review in reviews:
            record = valid(review)
            if record is None:
                continue
            split = bags.draw(record["stars"])
            if split == "train" and held_train is not None:
                held_train.append((False, record))
            else:
                handles[split].write(json.dumps(record, ensure_ascii=False) + "\n")
            count(split, record)
    finally:
        for handle in handles.values():
            handle.close()
    if held_train is not None:
        held_train.extend((True, r) for r in map(valid, extra) if r is not None)
        random.Random(f"{seed}/extra").shuffle(held_train)
        if extra_ratio is not None:
            held_train = _sample_extra(held_train, extra_ratio, seed)
        for is_extra, record in held_train:
            if is_extra:  # counted once kept; the main rows were counted as they came
                count("train", record)
        _write_lines(out_dir / "train.partial", (record for _, record in held_train))
    for name in SPLITS:
        (out_dir / f"{name}.partial").replace(out_dir / f"{name}.jsonl")
        summary.splits[name] = {str(s): counts[name][s] for s in STARS} | {
            "rows": sum(counts[name].values())
        }
    summary.sources = {
        name: {split: per_split[split] for split in SPLITS if per_split[split]}
        for name, per_split in by_source.items()
    }
    (out_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
