"""``python -m loadtests.ab_look`` at a tiny size on SQLite: the table, the JSON and the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.ab_look import main


def test_times_the_incremental_look_beside_the_full_recompute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, page = tmp_path / "ab-look.json", tmp_path / "ab-look.md"
    args = ["--backend", "sqlite", "--sizes", "300,600", "--rounds", "2"]
    args += ["--json", str(out), "--markdown", str(page)]

    assert main(args) == 0

    report = json.loads(out.read_text())
    assert report["command"] == "python -m loadtests.ab_look " + " ".join(args)
    assert {"cpu", "cpus", "memory_gib", "python", "sqlite"} <= report["machine"].keys()
    assert [(r["backend"], r["size"]) for r in report["results"]] == [
        ("sqlite", 300),
        ("sqlite", 600),
    ]
    for r in report["results"]:
        assert len(r["incremental_ms_rounds"]) == 2
        assert 0 < min(r["incremental_ms_rounds"]) <= r["incremental_ms"]
        assert r["incremental_ms"] <= max(r["incremental_ms_rounds"])
        assert r["full_ms"] > 0 and r["fill_s"] >= 0 and r["first_look_s"] > 0
        assert r["ratio"] == pytest.approx(r["full_ms"] / r["incremental_ms"], rel=0.05, abs=0.06)
    shown = capsys.readouterr().out
    assert "incremental ms" in shown and "full ms" in shown
    text = page.read_text()
    assert report["command"] in text
    assert "| 300 | sqlite |" in text and "| 600 | sqlite |" in text


REFUSED = [
    (["--sizes", "10,many"], "--sizes must be comma-separated integers"),
    (["--sizes", "0"], "--sizes must be >= 1"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--backend", "oracle"], "invalid choice: 'oracle'"),
]


def test_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in REFUSED:
        with pytest.raises(SystemExit, match=r"^2$"):
            main(args)
        assert message in capsys.readouterr().err, args
