"""Packing a trained run into a versioned TorchServe archive: ``model_store/stars-<V>.mar``.

The archive is built by ``torch-model-archiver`` and carries everything a TorchServe worker
needs, also where starrating is not pip-installed: the modules of the ``handlers`` package and
of the ``starrating`` core that the handler imports, named one by one (TorchServe puts the
extracted archive on the worker's ``PYTHONPATH``), the run's saved model and tokenizer under
``model/``, the TorchServe settings (``handlers/model-config.yaml``) and the run's
``metrics.json`` and ``config.json`` under ``run/`` when present, and ``run/numerics.json``:
the accuracy of each inference numerics on the run's validation split, from which the handler's
``auto`` numerics picks the fastest within half a point of fp32 (``handlers.numerics``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import handlers
import starrating
from handlers import MODEL_SUBDIR, RUN_SUBDIR
from handlers.numerics import (
    AUTO,
    NUMERICS_FILE,
    PRECISION_CHOICES,
    PRECISIONS,
    NumericsRecord,
    PrecisionChoice,
    measure_numerics,
)
from starrating.artifacts import ArtifactError, Artifacts, load_artifacts
from starrating.service import MODEL_NAME, VERSION_RULE, archive_file_name, is_version

logger = logging.getLogger(__name__)

HANDLERS_DIR = Path(handlers.__file__).resolve().parent
CORE_DIR = Path(starrating.__file__).resolve().parent
HANDLER_FILE = HANDLERS_DIR / "star_handler.py"
MODEL_CONFIG = HANDLERS_DIR / "model-config.yaml"
RUN_FILES = ("metrics.json", "config.json")
# What a TorchServe worker imports from the archive, and nothing else of the project (the
# command line, training, the gateway): a test imports the handler from an unpacked archive.
HANDLER_MODULES = ("__init__", "batch", "config", "explain", "numerics", "star_handler")
CORE_MODULES = ("__init__", "artifacts", "cpus", "labels", "service", "text")


class ArchiveError(ValueError):
    """The run cannot be archived as asked (bad version, missing model, existing archive)."""


@dataclass(frozen=True)
class ArchiveResult:
    """What ``archive_run`` wrote."""

    path: Path
    version: str
    size_bytes: int
    run_files: tuple[str, ...]
    numerics: NumericsRecord


def archive_path(model_store: Path, version: str) -> Path:
    """Where version ``version`` of the model lives in ``model_store``."""
    return model_store / archive_file_name(version)


def archive_run(
    run_dir: Path,
    version: str,
    model_store: Path,
    *,
    force: bool = False,
    precision: PrecisionChoice = AUTO,
    validation: Path | None = None,
) -> ArchiveResult:
    """Write ``model_store/stars-<version>.mar`` from the run directory ``run_dir``.

    ``precision`` is what the handler serves in (``auto``: decided per device from the
    accuracies measured here on ``validation``, default the run's own validation split).
    """
    if not is_version(version):
        raise ArchiveError(f"version {version!r} must be {VERSION_RULE}")
    if precision not in PRECISION_CHOICES:
        raise ArchiveError(f"precision must be one of {', '.join(PRECISION_CHOICES)}")
    model_dir = run_dir / MODEL_SUBDIR
    try:
        # Refuse to archive what the handler could not load.
        artifacts = load_artifacts(model_dir)
    except (ArtifactError, OSError) as exc:
        raise ArchiveError(
            f"{run_dir} has no loadable model in {MODEL_SUBDIR}/ "
            f"(a run directory written by `starrating train`): {exc}"
        ) from exc
    target = archive_path(model_store, version)
    if target.exists() and not force:
        raise ArchiveError(f"{target} already exists; pass --force to overwrite version {version}")
    numerics = _measure_numerics(artifacts, run_dir, precision, validation)
    del artifacts
    model_store.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="starrating-archive-") as staging_name:
        staging = Path(staging_name)
        payload = staging / "payload"
        shutil.copytree(model_dir, payload / MODEL_SUBDIR)
        _copy_modules(CORE_DIR, CORE_MODULES, payload / "starrating")
        _copy_modules(HANDLERS_DIR, HANDLER_MODULES, payload / "handlers")
        included = tuple(name for name in RUN_FILES if (run_dir / name).is_file())
        (payload / RUN_SUBDIR).mkdir()
        for name in included:
            shutil.copy2(run_dir / name, payload / RUN_SUBDIR / name)
        (payload / RUN_SUBDIR / NUMERICS_FILE).write_text(
            json.dumps(numerics.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        out = staging / "out"
        out.mkdir()
        _run_model_archiver(version, payload, out, tmp=staging / "tmp")
        # Write beside the target, then rename: a running TorchServe never sees half a file.
        partial = target.with_name(f".{target.name}.partial")
        shutil.move(out / f"{MODEL_NAME}.mar", partial)
        os.replace(partial, target)

    size = target.stat().st_size
    logger.info("wrote %s (%.1f MB, version %s)", target, size / 1e6, version)
    return ArchiveResult(
        path=target, version=version, size_bytes=size, run_files=included, numerics=numerics
    )


def run_validation_split(run_dir: Path) -> Path | None:
    """The validation split the run trained with, as its ``config.json`` names it."""
    from training.config import TrainConfig

    try:
        raw = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data, validation = (Path(raw[k]) if raw.get(k) else None for k in ("data", "validation"))
    return TrainConfig(out=run_dir, data=data, validation=validation).split_path("validation")


def _measure_numerics(
    artifacts: Artifacts, run_dir: Path, precision: PrecisionChoice, validation: Path | None
) -> NumericsRecord:
    """Accuracy per numerics on the validation split; without one, ``auto`` serves fp32."""
    from training.data.readers import DataFormatError
    from training.data.streaming import read_split

    split = validation if validation is not None else run_validation_split(run_dir)
    if split is None or not split.exists():
        where = split if split is not None else f"{run_dir}/config.json"
        if precision == AUTO:
            logger.warning(
                "no validation split (%s): auto numerics will serve fp32; pass --validation", where
            )
        why = f"not measured: no validation split ({where})"
        return NumericsRecord(requested=precision, refused=dict.fromkeys(PRECISIONS[1:], why))
    try:
        texts, stars = read_split(split)
    except DataFormatError as exc:
        raise ArchiveError(f"cannot measure numerics on {split}: {exc}") from exc
    logger.info("measuring numerics on %s (%d reviews)", split, len(texts))
    return measure_numerics(artifacts, texts, stars, requested=precision, split=split.name)


def _copy_modules(package_dir: Path, modules: tuple[str, ...], target: Path) -> None:
    target.mkdir(parents=True)
    for module in modules:
        shutil.copy2(package_dir / f"{module}.py", target / f"{module}.py")


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
