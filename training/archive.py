"""Packing a trained run into a versioned TorchServe archive: ``model_store/stars-<V>.mar``.

The archive is built by ``torch-model-archiver`` and carries everything a TorchServe worker
needs, also where starrating is not pip-installed: the handler (``star_handler.py``), the
``starrating`` core and ``handlers`` packages it imports (TorchServe puts the extracted archive
on the worker's ``PYTHONPATH``), the run's saved model and tokenizer under ``model/``, the
TorchServe settings (``handlers/model-config.yaml``) and the run's ``metrics.json`` and
``config.json`` under ``run/`` when present.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import handlers
import starrating
from handlers import MODEL_SUBDIR
from starrating.artifacts import ArtifactError, load_artifacts

logger = logging.getLogger(__name__)

MODEL_NAME = "stars"
HANDLERS_DIR = Path(handlers.__file__).resolve().parent
CORE_DIR = Path(starrating.__file__).resolve().parent
HANDLER_FILE = HANDLERS_DIR / "star_handler.py"
MODEL_CONFIG = HANDLERS_DIR / "model-config.yaml"
RUN_FILES = ("metrics.json", "config.json")
# Used in URL paths (/predictions/stars/<V>) and file names: keep it to URL-safe characters.
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
# The command line is no use inside a TorchServe worker.
_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "cli")


class ArchiveError(ValueError):
    """The run cannot be archived as asked (bad version, missing model, existing archive)."""


@dataclass(frozen=True)
class ArchiveResult:
    """What ``archive_run`` wrote."""

    path: Path
    version: str
    size_bytes: int
    run_files: tuple[str, ...]


def archive_path(model_store: Path, version: str) -> Path:
    """Where version ``version`` of the model lives in ``model_store``."""
    return model_store / f"{MODEL_NAME}-{version}.mar"


def archive_run(
    run_dir: Path, version: str, model_store: Path, *, force: bool = False
) -> ArchiveResult:
    """Write ``model_store/stars-<version>.mar`` from the run directory ``run_dir``."""
    if not _VERSION.match(version):
        raise ArchiveError(
            f"version {version!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit (e.g. 1.0)"
        )
    model_dir = run_dir / MODEL_SUBDIR
    try:
        # Refuse to archive what the handler could not load.
        load_artifacts(model_dir)
    except (ArtifactError, OSError) as exc:
        raise ArchiveError(
            f"{run_dir} has no loadable model in {MODEL_SUBDIR}/ "
            f"(a run directory written by `starrating train`): {exc}"
        ) from exc
    target = archive_path(model_store, version)
    if target.exists() and not force:
        raise ArchiveError(f"{target} already exists; pass --force to overwrite version {version}")
    model_store.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="starrating-archive-") as staging_name:
        staging = Path(staging_name)
        payload = staging / "payload"
        shutil.copytree(model_dir, payload / MODEL_SUBDIR)
        shutil.copytree(CORE_DIR, payload / "starrating", ignore=_NOT_SHIPPED)
        shutil.copytree(HANDLERS_DIR, payload / "handlers", ignore=_NOT_SHIPPED)
        included = tuple(name for name in RUN_FILES if (run_dir / name).is_file())
        if included:
            (payload / "run").mkdir()
            for name in included:
                shutil.copy2(run_dir / name, payload / "run" / name)
        out = staging / "out"
        out.mkdir()
        _run_model_archiver(version, payload, out, tmp=staging / "tmp")
        # Write beside the target, then rename: a running TorchServe never sees half a file.
        partial = target.with_name(f".{target.name}.partial")
        shutil.move(out / f"{MODEL_NAME}.mar", partial)
        os.replace(partial, target)

    size = target.stat().st_size
    logger.info("wrote %s (%.1f MB, version %s)", target, size / 1e6, version)
    return ArchiveResult(path=target, version=version, size_bytes=size, run_files=included)


def _run_model_archiver(version: str, payload: Path, out: Path, tmp: Path) -> None:
    """torch-model-archiver in a child process with its own TMPDIR.

    The archiver stages files in ``$TMPDIR/<model name>``, which two archive runs of the same
    model name at once would share.
    """
    tmp.mkdir()
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        MODEL_NAME,
        "--version",
        version,
        "--handler",
        str(HANDLER_FILE),
        "--extra-files",
        str(payload),
        "--config-file",
        str(MODEL_CONFIG),
        "--export-path",
        str(out),
        "--archive-format",
        "default",
    ]
    result = subprocess.run(
        command,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed: {result.stderr.strip()[-2000:]}")
