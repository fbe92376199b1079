"""`starrating-serving-layout`: what the serve image's entry point sizes TorchServe with."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from serving import layout


def _archive(path: Path, model: str, version: str) -> None:
    """A .mar as far as the layout reads it: its manifest."""
    with zipfile.ZipFile(path, "w") as archive:
        manifest = {"model": {"modelName": model, "modelVersion": version}}
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))


def test_prints_workers_and_threads_for_the_versions_in_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("serving.sizing.available_cpus", lambda: 5)
    monkeypatch.setattr(layout, "available_cpus", lambda: 5)
    for version in ("1.0", "2.0"):
        _archive(tmp_path / f"stars-{version}.mar", "stars", version)
    # Not versions of the model: another model's archive and a file that is no archive.
    _archive(tmp_path / "other-1.0.mar", "other", "1.0")
    (tmp_path / "broken.mar").write_bytes(b"not a zip")
    assert layout.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == "2 1\n"
    assert "2 version(s) on 5 CPU(s): 2 worker(s) x 1 thread(s) each" in err


def test_an_empty_store_is_an_error_that_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert layout.main([str(tmp_path)]) == 1
    assert f"no .mar archive of stars in {tmp_path}" in capsys.readouterr().err
