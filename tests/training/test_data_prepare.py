"""`starrating data prepare` on the file layouts users bring, including broken rows."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from training.data import embedded as embedded_module
from training.data.embedded import mean_rating_to_stars
from training.data.prepare import SPLITS, parse_stars

runner = CliRunner()

TSV_HEADER = "marketplace\tcustomer_id\treview_id\tstar_rating\treview_headline\treview_body\n"


def _amazon_tsv(rows: int) -> str:
    lines = [TSV_HEADER]
    for i in range(rows):
        stars = i % 5 + 1
        lines.append(f'US\t{i}\tR{i}\t{stars}\tHeadline {i}\tBody "quoted {i}\n')
    return "".join(lines)


def _read_split(out: Path, name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]


def _invoke(out: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["data", "prepare", "--out", str(out), *args])


def _prepare(tmp_path: Path, *args: str) -> tuple[Path, dict[str, object]]:
    out = tmp_path / "prepared"
    result = _invoke(out, *args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("gzipped", [False, True])
def test_amazon_tsv_gzip_or_not(tmp_path: Path, gzipped: bool) -> None:
    path = tmp_path / ("reviews.tsv.gz" if gzipped else "reviews.tsv")
    data = _amazon_tsv(200).encode()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    out, summary = _prepare(tmp_path, "--source", str(path))
    assert summary["rows_read"] == 200 and summary["rows_written"] == 200
    rows = _read_split(out, "train") + _read_split(out, "validation") + _read_split(out, "test")
    assert len(rows) == 200
    # headline and body are joined, and an unbalanced quote does not swallow the next lines
    assert {"text": 'Headline 7. Body "quoted 7', "stars": 3} in rows
    splits = summary["splits"]
    assert isinstance(splits, dict)
    assert splits["validation"]["rows"] == 20 and splits["test"]["rows"] == 20
    assert all(splits["test"][str(s)] == 4 for s in range(1, 6))  # stratified


def test_amazon_2023_jsonl_with_bad_rows_reports_counts(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    good = [{"rating": float(i % 5 + 1), "title": "T", "text": f"text {i}"} for i in range(50)]
    bad = [
        {"rating": 7.0, "title": "", "text": "out of range"},
        {"rating": 2.5, "title": "", "text": "fractional"},
        {"rating": "five", "title": "", "text": "mistyped"},
        {"rating": 4.0, "title": "", "text": "   "},
        {"rating": 3.0, "title": None, "text": None},
    ]
    lines = [json.dumps(r) for r in good + bad] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    out, summary = _prepare(tmp_path, "--source", str(path))
    assert summary["rows_read"] == 56
    assert summary["rows_written"] == 50
    assert summary["skipped"] == {"missing_text": 3, "bad_label": 3}
    assert str(_read_split(out, "train")[0]["text"]).startswith("T. text")


def test_generic_csv_needs_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "body,score\n" + "".join(f'"nice, really {i}",{i % 5 + 1}\n' for i in range(30))
    )
    result = runner.invoke(
        app, ["data", "prepare", "--out", str(tmp_path / "o"), "--source", str(path)]
    )
    assert result.exit_code == 2
    assert "--text-col" in result.output
    _, summary = _prepare(
        tmp_path, "--source", str(path), "--text-col", "body", "--label-col", "score"
    )
    assert summary["rows_written"] == 30


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    path = tmp_path / "reviews.tsv"
    path.write_text(_amazon_tsv(300))
    out_a, _ = _prepare(tmp_path / "a", "--source", str(path), "--seed", "1")
    out_b, _ = _prepare(tmp_path / "b", "--source", str(path), "--seed", "1")
    out_c, _ = _prepare(tmp_path / "c", "--source", str(path), "--seed", "2")
    assert _read_split(out_a, "test") == _read_split(out_b, "test")
    assert _read_split(out_a, "test") != _read_split(out_c, "test")


def test_missing_file_and_unknown_type_fail_with_a_message(tmp_path: Path) -> None:
    for source in (str(tmp_path / "nope.tsv"), str(tmp_path)):
        result = runner.invoke(
            app, ["data", "prepare", "--out", str(tmp_path / "o"), "--source", source]
        )
        assert result.exit_code == 2 and "error" in result.output


@pytest.mark.parametrize(
    ("mean", "stars"),
    [
        (-4.0, 1),
        (-2.01, 1),
        (-2.0, 2),
        (-0.51, 2),
        (-0.5, 3),
        (0.49, 3),
        (0.5, 4),
        (1.99, 4),
        (2.0, 5),
        (4.0, 5),
    ],
)
def test_embedded_cut_points(mean: float, stars: int) -> None:
    assert mean_rating_to_stars(mean) == stars


@pytest.mark.parametrize(
    ("value", "stars"),
    [
        (5, 5),
        ("5", 5),
        (5.0, 5),
        ("3.0", 3),
        (0, None),
        (True, None),
        (float("nan"), None),
        ("", None),
    ],
)
def test_parse_stars(value: object, stars: int | None) -> None:
    assert parse_stars(value) == stars


def test_embedded_data_fails_clearly_when_registry_unreachable_and_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from training.data import embedded

    def no_registry(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr("training.data.embedded.subprocess.run", no_registry)
    with pytest.raises(embedded.EmbeddedDataError, match=r"could not fetch.*nothing is cached"):
        list(embedded.read_embedded(tmp_path))


def test_corrupt_cached_embedded_data_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import embedded

    cached = tmp_path / "embedded" / embedded.AMAZON.ground_truth.name
    cached.parent.mkdir(parents=True)
    cached.write_text("1_1\t-0.9\ttampered\n")
    fetched: list[Path] = []
    monkeypatch.setattr(embedded, "_download", fetched.append)
    assert embedded.fetch(tmp_path) == cached
    assert fetched == [cached]


# -- the embedded archive's corpora -----------------------------------------------------------


def _synthetic_corpus(cache: Path, name: str, rows: int) -> embedded_module.Corpus:
    """A corpus written into the cache as the archive lays it out (CRLF, tab separated), with
    the checksums and row counts of what was written, so nothing is downloaded."""
    truth, ratings = [], []
    for i in range(rows):
        star_mean = (i % 9) - 4  # -4..+4, every star
        votes = [star_mean] * 3 + [max(-4, star_mean - 1)]
        mean = sum(votes) / len(votes)
        truth.append(f"{i}_1\t{mean}\t{name} sentence number {i}\r\n")
        ratings.append(f"{i}_1\t{mean}\t0.4\t{votes}\r\n")
    files = []
    for kind, lines in (("GroundTruth", truth), ("anonDataRatings", ratings)):
        path = cache / "embedded" / f"{name}_{kind}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines), newline="")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(embedded_module.ArchiveFile(path.name, digest, rows, "utf-8"))
    return embedded_module.Corpus(name, files[0], files[1])


@pytest.fixture
def synthetic_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setattr(embedded_module, "AMAZON", _synthetic_corpus(cache, "amazon", 300))
    extra = tuple(_synthetic_corpus(cache, n, r) for n, r in (("movies", 120), ("tweets", 80)))
    monkeypatch.setattr(embedded_module, "EXTRA_CORPORA", extra)
    monkeypatch.setenv("STARRATING_CACHE_DIR", str(cache))
    return cache


def _lines(out: Path, split: str) -> bytes:
    return (out / f"{split}.jsonl").read_bytes()


def test_embedded_rows_carry_their_id_source_and_ratings(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    out, summary = _prepare(tmp_path / "amazon")
    assert summary["rows_written"] == 300
    splits = summary["splits"]
    assert isinstance(splits, dict)
    assert summary["sources"] == {"amazon": {s: splits[s]["rows"] for s in SPLITS}}
    rows = [r for split in SPLITS for r in _read_split(out, split)]
    assert len({r["id"] for r in rows}) == 300
    row = next(r for r in rows if r["id"] == "5_1")
    assert row == {
        "text": "amazon sentence number 5",
        "stars": 4,  # mean (1 + 1 + 1 + 0) / 4 = 0.75
        "id": "5_1",
        "source": "amazon",
        "ratings": [1, 1, 1, 0],
        "distribution": [0.0, 0.0, 0.25, 0.75, 0.0],  # raters' own stars: 4, 4, 4, 3
    }


def test_extra_corpora_go_to_training_only_and_leave_the_amazon_splits_as_they_were(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    plain, plain_summary = _prepare(tmp_path / "plain")
    mixed, summary = _prepare(tmp_path / "mixed", "--with-extra-corpora")
    for split in ("validation", "test"):
        assert _lines(mixed, split) == _lines(plain, split)
    train = _read_split(mixed, "train")
    amazon = plain_summary["sources"]
    assert isinstance(amazon, dict) and sum(amazon["amazon"].values()) == 300
    splits = summary["splits"]
    assert isinstance(splits, dict)
    assert len(train) == amazon["amazon"]["train"] + 120 + 80 == splits["train"]["rows"]
    assert summary["sources"] == amazon | {"movies": {"train": 120}, "tweets": {"train": 80}}
    amazon_train = [r for r in train if r["source"] == "amazon"]
    assert sorted(map(json.dumps, amazon_train)) == sorted(
        map(json.dumps, _read_split(plain, "train"))
    )
    # Mixed through the file, so a streaming shuffle buffer sees every source all epoch long.
    assert {r["source"] for r in train[:60]} == {"amazon", "movies", "tweets"}
    again, _ = _prepare(tmp_path / "again", "--with-extra-corpora")
    assert _lines(again, "train") == _lines(mixed, "train")  # seeded


def test_the_training_stream_reads_rows_with_extra_fields(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    from training.data.streaming import read_split

    mixed, _ = _prepare(tmp_path / "mixed", "--with-extra-corpora")
    texts, stars = read_split(mixed / "train.jsonl")
    assert len(texts) == len(_read_split(mixed, "train")) > 400
    assert set(stars) == {1, 2, 3, 4, 5}


def test_extra_corpora_need_the_embedded_source_and_say_so_in_help(tmp_path: Path) -> None:
    path = tmp_path / "reviews.tsv"
    path.write_text(_amazon_tsv(20))
    result = _invoke(tmp_path / "o", "--source", str(path), "--with-extra-corpora")
    assert result.exit_code == 2 and "use --source default" in " ".join(result.output.split())
    help_text = runner.invoke(app, ["data", "prepare", "--help"], env={"COLUMNS": "200"})
    assert "--with-extra-corpora" in help_text.output


def test_a_corpus_with_missing_rows_fails_clearly(
    tmp_path: Path, synthetic_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    movies = embedded_module.EXTRA_CORPORA[0]
    wrong = dataclasses.replace(
        movies, ground_truth=dataclasses.replace(movies.ground_truth, rows=121)
    )
    monkeypatch.setattr(embedded_module, "EXTRA_CORPORA", (wrong,))
    result = _invoke(tmp_path / "o", "--with-extra-corpora")
    assert result.exit_code == 2
    assert "movies_GroundTruth.txt has 120 rows, expected 121" in result.output


def test_the_real_archive_adds_its_three_corpora_to_training() -> None:
    """On the cached archive: every corpus's row count and the Amazon splits of today."""
    from starrating.settings import CoreSettings

    cache = CoreSettings().cache_dir
    if not all((cache / "embedded" / f.name).is_file() for f in embedded_module.ARCHIVE_FILES):
        pytest.skip("the embedded archive is not cached here (starrating data prepare fetches it)")
    counts = {
        c.name: sum(1 for _ in embedded_module.read_corpus(cache, c))
        for c in embedded_module.CORPORA
    }
    assert counts == {"amazon": 3708, "movies": 10605, "tweets": 4200, "nyt_editorials": 5190}


# -- --extra-corpora-ratio: a seeded sample of the extra corpora -----------------------------


def _key(row: dict[str, object]) -> tuple[object, object]:
    return row["source"], row["id"]


def test_a_ratio_keeps_a_seeded_sample_of_the_extra_corpora_and_counts_it_right(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    full, _ = _prepare(tmp_path / "full", "--with-extra-corpora", "--seed", "7")
    args = ("--with-extra-corpora", "--extra-corpora-ratio", "0.5", "--seed", "7")
    half, summary = _prepare(tmp_path / "half", *args)
    for split in ("validation", "test"):
        assert _lines(half, split) == _lines(full, split)
    train = _read_split(half, "train")
    amazon = [r for r in train if r["source"] == "amazon"]
    extra = [r for r in train if r["source"] != "amazon"]
    full_amazon = [r for r in _read_split(full, "train") if r["source"] == "amazon"]
    assert {_key(r) for r in amazon} == {_key(r) for r in full_amazon}
    assert len(extra) == round(0.5 * len(amazon)) < 200  # of the 200 extra rows
    splits, sources = summary["splits"], summary["sources"]
    assert isinstance(splits, dict) and isinstance(sources, dict)
    assert splits["train"]["rows"] == len(train) == len(amazon) + len(extra)
    assert {s: splits["train"][str(s)] for s in range(1, 6)} == {
        s: sum(r["stars"] == s for r in train) for s in range(1, 6)
    }
    assert {name: per_split["train"] for name, per_split in sources.items()} == {
        name: sum(r["source"] == name for r in train) for name in ("amazon", "movies", "tweets")
    }
    assert summary["rows_written"] == len(train) + 300 - len(amazon)
    assert summary["rows_read"] == 500
    assert summary["extra_ratio"] == 0.5
    assert {r["source"] for r in train[:60]} == {"amazon", "movies", "tweets"}  # mixed through

    again, _ = _prepare(tmp_path / "again", *args)
    assert _lines(again, "train") == _lines(half, "train")
    other, _ = _prepare(tmp_path / "other", *args[:-1], "8")
    assert {_key(r) for r in _read_split(other, "train")} != {_key(r) for r in train}


def test_a_ratio_samples_the_full_split_as_the_issue_15_recipe_did(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    """The measured recipe: the full split's Amazon rows plus random.Random(seed).sample() of
    its extra rows as many as Amazon's, shuffled by the same generator."""
    import random

    full, _ = _prepare(tmp_path / "full", "--with-extra-corpora")
    rows = _read_split(full, "train")
    amazon = [r for r in rows if r["source"] == "amazon"]
    extra = [r for r in rows if r["source"] != "amazon"]
    rng = random.Random(42)
    recipe = amazon + rng.sample(extra, 160)
    rng.shuffle(recipe)
    ratio = str(160 / len(amazon))
    sampled, _ = _prepare(
        tmp_path / "sampled", "--with-extra-corpora", "--extra-corpora-ratio", ratio
    )
    assert _read_split(sampled, "train") == recipe


def test_a_ratio_asking_for_more_than_there_is_keeps_all_and_says_so(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    full, _ = _prepare(tmp_path / "full", "--with-extra-corpora")
    out = tmp_path / "all"
    result = _invoke(out, "--with-extra-corpora", "--extra-corpora-ratio", "2")
    assert result.exit_code == 0, result.output
    assert _lines(out, "train") == _lines(full, "train")
    assert "keeping all of them" in " ".join(result.output.split())


def test_a_ratio_needs_the_extra_corpora_and_a_positive_number(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    result = _invoke(tmp_path / "o", "--extra-corpora-ratio", "1")
    assert result.exit_code == 2
    assert "add --with-extra-corpora" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()
    for bad in ("0", "-1", "nan"):
        result = _invoke(tmp_path / "o", "--with-extra-corpora", "--extra-corpora-ratio", bad)
        assert result.exit_code == 2 and "above 0" in result.output, result.output
    help_text = runner.invoke(app, ["data", "prepare", "--help"], env={"COLUMNS": "200"})
    assert "--extra-corpora-ratio" in help_text.output
