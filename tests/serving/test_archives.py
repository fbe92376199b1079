"""Finding the model's archives in a model store by their manifests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from serving.archives import discover_archives, version_key
from serving.errors import LifecycleError


def fake_mar(path: Path, name: str, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        manifest = {"model": {"modelName": name, "modelVersion": version}}
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


def test_archives_are_found_by_manifest_and_ordered_by_version(tmp_path: Path) -> None:
    fake_mar(tmp_path / "stars-1.9.mar", "stars", "1.9")
    fake_mar(tmp_path / "stars-1.10.mar", "stars", "1.10")
    fake_mar(tmp_path / "renamed.mar", "stars", "2.0")
    fake_mar(tmp_path / "other-5.0.mar", "other", "5.0")
    (tmp_path / "broken.mar").write_text("not a zip")
    found = discover_archives(tmp_path)
    assert [a.version for a in found] == ["1.9", "1.10", "2.0"]
    assert found[-1].path.name == "renamed.mar"
    assert version_key("1.10") > version_key("1.9")


def test_two_archives_of_one_version_are_refused(tmp_path: Path) -> None:
    fake_mar(tmp_path / "a.mar", "stars", "1.0")
    fake_mar(tmp_path / "b.mar", "stars", "1.0")
    with pytest.raises(LifecycleError, match="both hold"):
        discover_archives(tmp_path)
