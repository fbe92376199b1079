"""Experiment tracking with MLflow, and the lineage table of tracked runs.

By default each run keeps its own SQLite store in the run directory (``RUN/mlflow.db``, artefacts
under ``RUN/mlartifacts``), so nothing outside the run is needed; ``MLFLOW_TRACKING_URI`` (or
``--tracking-uri``) points at a server or SageMaker's managed MLflow instead. Only rank 0 tracks.
Tracked: hyperparameters and data locations (params), training metrics per logging step,
validation metrics per epoch, the final evaluation, rule statuses (tags) and plots (artefacts).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import TrainConfig

logger = logging.getLogger(__name__)

LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
# Directories never searched for run stores.
_SKIP_DIRS = {".venv", "venv", "node_modules", "__pycache__", LOCAL_ARTIFACTS, "checkpoints"}


def _quiet_mlflow() -> None:
    # MLflow phones home unless told not to; this machine (and many clusters) has no route out.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def local_store_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / LOCAL_STORE).resolve()}"


def tracking_uri_for(config: TrainConfig) -> str:
    return (
        config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(config.out)
    )


class RunTracker:
    """One MLflow run of a training job; every method is a no-op when disabled (rank > 0)."""

    def __init__(self, config: TrainConfig, *, enabled: bool) -> None:
        self.enabled = enabled
        self.config = config
        self.run_id: str | None = None
        self._client: Any = None

    def start(self, resume_run_id: str | None = None) -> str | None:
        """Start a run (or continue ``resume_run_id``) and return its id."""
        if not self.enabled:
            return None
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        uri = tracking_uri_for(self.config)
        local = uri == local_store_uri(self.config.out)
        if local:
            self.config.out.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=uri)
        if resume_run_id is not None:
            self.run_id = resume_run_id
            self._client.update_run(resume_run_id, status="RUNNING")
            logger.info("continuing MLflow run %s at %s", resume_run_id, uri)
            return self.run_id
        experiment = self._client.get_experiment_by_name(self.config.experiment)
        if experiment is None:
            artifacts = (self.config.out / LOCAL_ARTIFACTS).resolve().as_uri() if local else None
            experiment_id = self._client.create_experiment(
                self.config.experiment, artifact_location=artifacts
            )
        else:
            experiment_id = experiment.experiment_id
        run = self._client.create_run(
            experiment_id,
            run_name=self.config.out.resolve().name,
            tags={"starrating.run_dir": str(self.config.out.resolve())},
        )
        self.run_id = run.info.run_id
        logger.info("tracking MLflow run %s at %s", self.run_id, uri)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items() if v is not None]
        self._client.log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled or self.run_id is None:
            return
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        if not self.enabled or self.run_id is None:
            return
        for path in paths:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run: FINISHED, FAILED or KILLED (interrupted, to be resumed)."""
        if not self.enabled or self.run_id is None:
            return
        self._client.set_terminated(self.run_id, status=status)


@dataclass(frozen=True)
class RunRecord:
    """One row of the lineage table."""

    name: str
    run_id: str
    status: str
    started: float | None
    duration_s: float | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    store: str


def find_local_stores(root: Path, max_depth: int = 4) -> Iterator[Path]:
    """``mlflow.db`` files under ``root``, not descending into environments or artefacts."""
    root_depth = len(root.resolve().parts)
    for directory, subdirs, files in os.walk(root.resolve()):
        depth = len(Path(directory).parts) - root_depth
        subdirs[:] = sorted(
            d
            for d in subdirs
            if d not in _SKIP_DIRS and not d.startswith(".") and depth < max_depth
        )
        if LOCAL_STORE in files:
            yield Path(directory) / LOCAL_STORE


def list_runs(root: Path | None = None, tracking_uri: str | None = None) -> list[RunRecord]:
    """Tracked runs, oldest first: from the local stores under ``root`` and/or a server."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uris = [tracking_uri] if tracking_uri else []
    if root is not None:
        uris += [f"sqlite:///{db}" for db in find_local_stores(root)]
    records: list[RunRecord] = []
    for uri in uris:
        client = MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            continue
        for run in client.search_runs(experiments, max_results=10_000):
            info, data = run.info, run.data
            end = info.end_time or None
            records.append(
                RunRecord(
                    name=info.run_name or info.run_id[:8],
                    run_id=info.run_id,
                    status=info.status,
                    started=info.start_time / 1000 if info.start_time else None,
                    duration_s=(end - info.start_time) / 1000 if end and info.start_time else None,
                    params=dict(data.params),
                    metrics=dict(data.metrics),
                    tags={k: v for k, v in data.tags.items() if not k.startswith("mlflow.")},
                    store=uri,
                )
            )
    return sorted(records, key=lambda r: r.started or 0.0)
