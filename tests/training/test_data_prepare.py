"""`starrating data prepare` on the file layouts users bring, including broken rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starrating.cli import app
from training.data.embedded import mean_rating_to_stars
from training.data.prepare import parse_stars

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

    cached = tmp_path / "embedded" / embedded.CACHE_NAME
    cached.parent.mkdir(parents=True)
    cached.write_text("1_1\t-0.9\ttampered\n")
    fetched: list[Path] = []
    monkeypatch.setattr(embedded, "_download", fetched.append)
    assert embedded.fetch(tmp_path) == cached
    assert fetched == [cached]
