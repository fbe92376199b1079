"""The model's ``.mar`` archives in a model store, known by the name and version in each
manifest (not by file name), oldest version first."""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from serving.errors import LifecycleError
from starrating.service import MODEL_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveInfo:
    """A ``.mar`` in the model store and the model name and version in its manifest."""

    path: Path
    model_name: str
    version: str


def version_key(version: str) -> tuple[int, Version | str]:
    """Sort key for model versions: PEP 440 order where it parses (1.10 after 1.9), else text."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def discover_archives(model_store: Path, model_name: str = MODEL_NAME) -> list[ArchiveInfo]:
    """The model's archives in ``model_store``, oldest version first (read from each manifest)."""
    found: dict[str, ArchiveInfo] = {}
    for path in sorted(model_store.glob("*.mar")):
        try:
            with zipfile.ZipFile(path) as archive:
                manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            name = str(manifest["model"]["modelName"])
            version = str(manifest["model"]["modelVersion"])
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            logger.warning("skipping %s: not a readable model archive (%s)", path, exc)
            continue
        if name != model_name:
            continue
        if version in found:
            raise LifecycleError(
                f"{path.name} and {found[version].path.name} both hold {model_name} version "
                f"{version}; remove one from {model_store}"
            )
        found[version] = ArchiveInfo(path, name, version)
    return sorted(found.values(), key=lambda a: version_key(a.version))
