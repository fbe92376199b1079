"""The serving stack under benchmark: TorchServe + the gateway, started by ``serving.launcher``.

Each benchmark gets its own ``STARRATING_HOME``, model store and free loopback ports, so it never
touches a stack the user is running. Token authorization stays on, as in deployment. Tuning
knobs that the archive's ``model-config.yaml`` sets (workers, TorchServe batch size and delay,
the handler's threads, batching strategy and numerics) can be overridden per run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from starrating.service import HANDLER_ENV_PREFIX

logger = logging.getLogger(__name__)

BENCH_VERSION = "bench"


@dataclass(frozen=True)
class StackTuning:
    """Overrides of the archive's serving settings; None keeps the archive's value."""

    precision: str = "auto"
    strategy: str | None = None
    sub_batch_size: int | None = None
    threads: int | None = None
    workers: int | None = None
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None

    def handler_env(self) -> dict[str, str]:
        """The handler's ``STARRATING_HANDLER_*`` overrides (TorchServe passes them on)."""
        values = {
            "PRECISION": self.precision,
            "STRATEGY": self.strategy,
            "SUB_BATCH_SIZE": self.sub_batch_size,
            "THREADS": self.threads,
        }
        return {HANDLER_ENV_PREFIX + k: str(v) for k, v in values.items() if v is not None}

    def describe(self) -> dict[str, str | int]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class StackEndpoints:
    """Where a running benchmark stack answers."""

    gateway_url: str
    torchserve_url: str
    version: str
    torchserve_headers: dict[str, str]
    gateway_pid: int
    torchserve_pid: int

    @property
    def torchserve_path(self) -> str:
        return f"/predictions/stars/{self.version}"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the gateway, by TorchServe (frontend JVM + workers) and by
        TorchServe's Python workers alone (the model's process)."""
        return {
            "gateway": process_tree_cpu(self.gateway_pid),
            "torchserve": process_tree_cpu(self.torchserve_pid),
            "torchserve_workers": process_tree_cpu(self.torchserve_pid, children_only=True),
        }

    def upstream_request_texts(self) -> tuple[float, float]:
        """(texts, TorchServe requests) the gateway's adaptive batcher has sent so far, from
        its ``/metrics``."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.gateway_url}/metrics", timeout=10.0).raise_for_status().text
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "starrating_upstream_request_texts"
            for sample in family.samples
        }
        return (
            values.get("starrating_upstream_request_texts_sum", 0.0),
            values.get("starrating_upstream_request_texts_count", 0.0),
        )


def process_tree_cpu(pid: int, *, children_only: bool = False) -> float:
    """User + system CPU seconds of ``pid`` and its living children (0 for a gone process);
    ``children_only``: of the children without ``pid`` itself."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [*([] if children_only else [root]), *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def archive_for_bench(model_dir: Path, workdir: Path) -> Path:
    """A .mar of ``model_dir`` (version ``bench``) built the way ``starrating archive`` does."""
    from handlers import MODEL_SUBDIR
    from training.archive import archive_run

    run = workdir / "bench-run"
    run.mkdir(parents=True, exist_ok=True)
    (run / MODEL_SUBDIR).symlink_to(model_dir.resolve(), target_is_directory=True)
    return archive_run(run, BENCH_VERSION, workdir / "archives").path


@contextmanager
def running_stack(
    mar: Path,
    workdir: Path,
    tuning: StackTuning,
    *,
    gateway_env: Mapping[str, str] | None = None,
) -> Iterator[StackEndpoints]:
    """TorchServe (only ``mar``, sized and tuned by ``tuning``) and the gateway under
    ``workdir``; both stopped on exit. ``gateway_env``: the gateway's environment (None: this
    process's)."""
    from serving.addresses import free_port
    from serving.archives import discover_archives
    from serving.launcher import GatewayOptions, StackPlan
    from serving.launcher import running_stack as launched
    from serving.paths import ServingPaths
    from serving.sizing import serving_layout
    from serving.torchserve import TorchServeKeys
    from serving.torchserve_config import TorchServeOptions

    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    shutil.copy2(mar, store / mar.name)
    archives = discover_archives(store)
    if len(archives) != 1:
        raise RuntimeError(f"{mar} is not a readable stars archive")
    layout = serving_layout(1)
    if tuning.workers is not None:
        layout = replace(layout, workers_per_version=tuning.workers)
    plan = StackPlan(
        paths=ServingPaths.under(workdir),
        torchserve=TorchServeOptions.on_free_ports(store),
        gateway=GatewayOptions(port=free_port(), env=gateway_env),
        layout=layout,
        handler_env=tuning.handler_env(),
        batch_size=tuning.batch_size,
        max_batch_delay_ms=tuning.max_batch_delay_ms,
    )
    logger.info("starting TorchServe and the gateway in %s (%s)", workdir, tuning.describe())
    with launched(plan, progress=lambda message: logger.info("%s", message)) as stack:
        gateway = stack.started_gateway()
        if stack.torchserve_pid is None:
            raise RuntimeError("TorchServe did not start")
        key = TorchServeKeys.read(plan.paths.key_file).inference
        yield StackEndpoints(
            gateway.url,
            stack.inference_url,
            archives[0].version,
            {"Authorization": f"Bearer {key}"} if key else {},
            gateway_pid=gateway.pid,
            torchserve_pid=stack.torchserve_pid,
        )
