"""``starrating bench serving``: the stack against the in-process limit and the naive server.

One invocation measures, on the same model and the same review texts:

- ``limit``: the model in-process (no HTTP) with the stack's numerics, best of batch sizes and
  of plain vs length-sorted dynamic padding;
- ``naive``: FastAPI + ``transformers.pipeline`` per request, fp32, one uvicorn worker;
- ``stack``: gateway -> TorchServe -> handler;
- ``direct``: the same load straight at TorchServe, to isolate the gateway's cost;
- the peers (``loadtests.peers``): Ray Serve, BentoML, LitServe and TorchServe with a handler in
  the style of its Hugging Face example, each batching as its docs recommend, with the stack's
  numerics and number of torch threads;

and the ratios ``stack/limit``, ``stack/naive`` and ``stack/best peer`` (throughput,
reviews/s) and the gateway overhead (stack p50 - direct p50 with one user). All HTTP setups get
the same closed-loop load (``loadtests.loadgen``): one review per request, a fixed number of
users, no think time.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers import MODEL_SUBDIR
from loadtests.peers import PEERS
from loadtests.stack import StackTuning
from starrating.settings import CoreSettings

if TYPE_CHECKING:
    from handlers.numerics import Precision, PrecisionChoice

logger = logging.getLogger(__name__)

SETUPS = ("limit", "naive", "stack", "direct", *PEERS)


class BenchError(RuntimeError):
    """The benchmark cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class SetupResult:
    """Throughput (reviews/s) and latency (ms) of one setup.

    For ``limit`` the latencies are per batch of the best configuration; for the HTTP setups
    they are per request.
    """

    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingBenchConfig:
    """What ``starrating bench serving`` was asked to do."""

    model: Path | None = None
    data: Path | None = None
    duration: float = 20.0
    warmup: float = 3.0
    users: int = 16
    texts_per_request: int = 1
    precision: PrecisionChoice = "auto"
    setups: tuple[str, ...] = SETUPS
    tuning: StackTuning = field(default_factory=StackTuning)
    limit_seconds: float | None = None  # per in-process configuration; default duration / 8


@dataclass
class ServingBenchReport:
    """Everything one run measured, with the ratios the goals are stated in."""

    model: str
    precision: str
    users: int
    duration: float
    texts_per_request: int = 1
    setups: dict[str, SetupResult] = field(default_factory=dict)
    low_load: dict[str, SetupResult] = field(default_factory=dict)
    peers: dict[str, SetupResult] = field(default_factory=dict)
    limit_runs: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    precision_requested: str = ""
    precision_reason: str = ""

    @property
    def stack_over_limit(self) -> float | None:
        return _ratio(self.setups.get("stack"), self.setups.get("limit"))

    @property
    def stack_over_naive(self) -> float | None:
        return _ratio(self.setups.get("stack"), self.setups.get("naive"))

    @property
    def best_peer(self) -> str | None:
        """The peer with the highest throughput, if any ran."""
        return max(self.peers, key=lambda name: self.peers[name].rps, default=None)

    @property
    def stack_over_best_peer(self) -> float | None:
        best = self.best_peer
        return _ratio(self.setups.get("stack"), self.peers[best] if best else None)

    @property
    def gateway_overhead_ms(self) -> float | None:
        stack, direct = self.low_load.get("stack"), self.low_load.get("direct")
        if stack is None or direct is None:
            return None
        return stack.p50_ms - direct.p50_ms

    @property
    def accuracy_change_points(self) -> float | None:
        """Test accuracy of the chosen precision minus fp32's, in percentage points."""
        if "fp32" not in self.accuracy or self.precision not in self.accuracy:
            return None
        return 100.0 * (self.accuracy[self.precision] - self.accuracy["fp32"])

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "precision_requested": self.precision_requested,
            "precision_reason": self.precision_reason,
            "users": self.users,
            "texts_per_request": self.texts_per_request,
            "duration_s": self.duration,
            "stack_over_limit": self.stack_over_limit,
            "stack_over_naive": self.stack_over_naive,
            "gateway_overhead_ms": self.gateway_overhead_ms,
            "stack_over_best_peer": self.stack_over_best_peer,
            "best_peer": self.best_peer,
            "accuracy": self.accuracy,
            "accuracy_change_points": self.accuracy_change_points,
            **{name: asdict(result) for name, result in self.setups.items()},
            "low_load": {name: asdict(result) for name, result in self.low_load.items()},
            "peers": {name: asdict(result) for name, result in self.peers.items()},
            "limit_runs": self.limit_runs,
        }


def _ratio(top: SetupResult | None, bottom: SetupResult | None) -> float | None:
    if top is None or bottom is None or bottom.rps <= 0:
        return None
    return top.rps / bottom.rps


# --- the model under test -------------------------------------------------------------------


def newest_mar(model_store: Path) -> Path | None:
    """The most recently written ``stars-*.mar`` in ``model_store``, if any."""
    mars = sorted(model_store.glob("stars-*.mar"), key=lambda p: p.stat().st_mtime)
    return mars[-1] if mars else None


@dataclass(frozen=True)
class ModelUnderTest:
    """A saved model directory and, where one exists, the .mar it came from."""

    label: str
    model_dir: Path
    mar: Path | None


@contextmanager
def model_under_test(model: Path | None) -> Iterator[ModelUnderTest]:
    """Resolve ``--model``: a .mar, a run directory, a model directory, or the default.

    The default is the newest .mar in the model store, else the bundled encoder with an
    untrained head (throughput does not depend on the weights).
    """
    with tempfile.TemporaryDirectory(prefix="starrating-bench-model-") as tmp:
        work = Path(tmp)
        if model is None:
            model = newest_mar(CoreSettings().model_store)
        if model is None:
            from starrating.artifacts import save_artifacts
            from starrating.models import DEFAULT_MODEL, load_pretrained

            encoder, tokenizer = load_pretrained(DEFAULT_MODEL)
            directory = save_artifacts(work / "model", encoder, tokenizer)
            del encoder
            yield ModelUnderTest(f"{DEFAULT_MODEL} (untrained head)", directory, None)
        elif model.is_file() and model.suffix == ".mar":
            with zipfile.ZipFile(model) as archive:
                archive.extractall(work / "mar")
            directory = work / "mar" / MODEL_SUBDIR
            if not (directory / "config.json").is_file():
                raise BenchError(f"{model} holds no {MODEL_SUBDIR}/config.json")
            yield ModelUnderTest(str(model), directory, model)
        elif (model / "model" / "config.json").is_file():
            yield ModelUnderTest(str(model), model / "model", None)
        elif (model / "config.json").is_file():
            yield ModelUnderTest(str(model), model, None)
        else:
            raise BenchError(
                f"{model} is neither a .mar, a run directory nor a saved model directory"
            )


def resolve_precision(
    model: ModelUnderTest, requested: PrecisionChoice, data: Path | None
) -> tuple[Precision, str]:
    """The numerics the stack serves for ``requested`` on this CPU, and why.

    ``auto``: a .mar by the handler's own rule (``handlers.numerics.archive_precision``); a model
    without an archive by its accuracies measured now on the validation split of ``data``, as
    archiving it would record them.
    """
    import torch

    from handlers.numerics import AUTO, archive_precision, choose_precision, measure_numerics
    from loadtests.reviews import load_reviews
    from starrating.artifacts import load_artifacts

    cpu = torch.device("cpu")
    if requested != AUTO:
        return choose_precision(requested, None, cpu)[0], "asked for"
    if model.mar is not None:
        _, precision, reason = archive_precision(AUTO, model.model_dir.parent, cpu)
        return precision, reason
    validation = load_reviews(data, splits=("validation",))
    record = measure_numerics(load_artifacts(model.model_dir), validation.texts, validation.stars)
    return choose_precision(AUTO, record, cpu)


# --- the setups ---------------------------------------------------------------------------


def _percentiles_ms(seconds: Sequence[float]) -> tuple[float, float, float]:
    import numpy as np

    p50, p95, p99 = np.percentile(1000.0 * np.asarray(seconds, dtype=float), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def run_limit(
    model_dir: Path,
    texts: Sequence[str],
    test: Any,
    precision: str,
    seconds: float,
    report: ServingBenchReport,
) -> None:
    """In-process throughput with ``precision``, and test accuracy of fp32 vs ``precision``."""
    from handlers.numerics import apply_precision
    from loadtests.limit import measure_limit
    from starrating.artifacts import load_artifacts

    artifacts = load_artifacts(model_dir)
    report.accuracy["fp32"] = artifacts.accuracy(test.texts, test.stars)
    if precision != "fp32":
        artifacts = replace(artifacts, model=apply_precision(artifacts.model, precision))
        report.accuracy[precision] = artifacts.accuracy(test.texts, test.stars)
    runs = measure_limit(artifacts, texts, seconds=seconds)
    best = max(runs, key=lambda run: run.reviews_per_s)
    report.limit_runs = [
        {
            "threads": r.threads,
            "batch_size": r.batch_size,
            "padding": r.padding,
            "rps": r.reviews_per_s,
        }
        for r in runs
    ]
    p50, p95, p99 = _percentiles_ms(best.batch_seconds)
    report.setups["limit"] = SetupResult(
        best.reviews_per_s,
        p50,
        p95,
        p99,
        {"threads": best.threads, "batch_size": best.batch_size, "padding": best.padding},
    )
    del artifacts
    gc.collect()


def load_result(result: Any, **detail: Any) -> SetupResult:
    """A ``loadtests.loadgen.LoadResult`` as a setup result."""
    return SetupResult(
        result.rps,
        result.p50_ms,
        result.p95_ms,
        result.p99_ms,
        {"users": result.users, "requests": result.requests, "errors": result.errors, **detail},
    )


def run_naive(
    model_dir: Path, texts: Sequence[str], config: ServingBenchConfig, workdir: Path
) -> SetupResult:
    from loadtests.loadgen import run_load
    from loadtests.servers import naive_server

    with naive_server(model_dir, workdir / "logs") as url:
        result = run_load(
            url,
            "/v1/predictions",
            texts,
            users=config.users,
            duration=config.duration,
            warmup=config.warmup,
            texts_per_request=config.texts_per_request,
        )
    return load_result(result)


def run_stack(
    model: ModelUnderTest,
    texts: Sequence[str],
    config: ServingBenchConfig,
    workdir: Path,
    report: ServingBenchReport,
) -> None:
    """Saturating load on the gateway (stack) and on TorchServe (direct), then one user each."""
    from loadtests.loadgen import run_load
    from loadtests.stack import archive_for_bench, running_stack

    mar = model.mar or archive_for_bench(model.model_dir, workdir)
    tuning = replace(config.tuning, precision=config.precision)
    with running_stack(mar, workdir / "stack", tuning) as stack:
        targets = {
            "stack": (stack.gateway_url, "/v1/predictions", "gateway", {}),
            "direct": (
                stack.torchserve_url,
                stack.torchserve_path,
                "torchserve",
                stack.torchserve_headers,
            ),
        }

        def drive(name: str, users: int, duration: float, per_request: int) -> SetupResult:
            url, path, target, headers = targets[name]
            before = stack.cpu_seconds()
            texts_before = stack.upstream_request_texts()
            result = run_load(
                url,
                path,
                texts,
                target=target,
                users=users,
                duration=duration,
                warmup=config.warmup,
                headers=headers,
                texts_per_request=per_request,
            )
            # CPU per request of each server process: where a request's cost goes, whatever
            # else the machine was doing (warm-up requests estimated at the measured rate).
            after = stack.cpu_seconds()
            sent = result.requests * (1 + config.warmup / duration)
            cpu_ms = {
                f"{part}_cpu_ms_per_request": round(1000 * (after[part] - before[part]) / sent, 2)
                for part in after
            }
            # How full the adaptive batcher made TorchServe's requests (warm-up included).
            texts_after = stack.upstream_request_texts()
            sent_texts = texts_after[0] - texts_before[0]
            upstream_requests = texts_after[1] - texts_before[1]
            coalesced = (
                {"texts_per_torchserve_request": round(sent_texts / upstream_requests, 2)}
                if upstream_requests
                else {}
            )
            return load_result(result, **tuning.describe(), **cpu_ms, **coalesced)

        for name in ("stack", "direct"):
            if name in config.setups:
                report.setups[name] = drive(
                    name, config.users, config.duration, config.texts_per_request
                )
        if {"stack", "direct"} <= set(config.setups):
            # One user, one review per request: the latency a request pays with no queueing,
            # for the gateway overhead.
            for name in ("direct", "stack"):
                report.low_load[name] = drive(name, 1, max(config.duration / 2, 1.0), 1)


def peer_threads(tuning: StackTuning) -> int:
    """The torch threads of the stack's TorchServe workers together: what each peer gets.

    As ``serving.supervisor`` sizes one version (``serving.sizing``), unless ``--threads``,
    ``--workers`` or ``STARRATING_HANDLER_THREADS`` say otherwise.
    """
    import os

    from serving.sizing import THREADS_ENV, serving_layout

    layout = serving_layout(1)
    threads = tuning.threads or int(os.environ.get(THREADS_ENV) or layout.threads_per_worker)
    return (tuning.workers or layout.workers_per_version) * threads


def run_peers(
    model_dir: Path,
    texts: Sequence[str],
    config: ServingBenchConfig,
    workdir: Path,
    report: ServingBenchReport,
) -> None:
    """The same saturating load on each requested peer, started and stopped in turn."""
    from loadtests.loadgen import run_load
    from loadtests.peers import running_peer
    from loadtests.peers.rating import MAX_BATCH_SIZE, MAX_WAIT_S, PeerSettings

    settings = PeerSettings(model_dir, config.precision, peer_threads(config.tuning))
    for name in (peer for peer in PEERS if peer in config.setups):
        with running_peer(name, settings, workdir / "peers" / name) as endpoint:
            result = run_load(
                endpoint.url,
                endpoint.path,
                texts,
                users=config.users,
                duration=config.duration,
                warmup=config.warmup,
                texts_per_request=config.texts_per_request,
            )
        report.peers[name] = load_result(
            result,
            precision=settings.precision,
            threads=settings.threads,
            max_batch_size=MAX_BATCH_SIZE,
            max_wait_ms=round(1000 * MAX_WAIT_S, 3),
        )


def run_serving_bench(config: ServingBenchConfig) -> ServingBenchReport:
    """Run every requested setup in turn and return the report."""
    from loadtests.reviews import load_reviews

    unknown = set(config.setups) - set(SETUPS)
    if unknown:
        raise BenchError(f"unknown setups {sorted(unknown)}; choose from {SETUPS}")
    reviews = load_reviews(config.data)
    test = load_reviews(config.data, splits=("test",))
    texts = reviews.texts
    with (
        model_under_test(config.model) as model,
        tempfile.TemporaryDirectory(prefix="starrating-bench-") as tmp,
    ):
        workdir = Path(tmp)
        precision, reason = resolve_precision(model, config.precision, config.data)
        logger.info("numerics %s (%s): %s", precision, config.precision, reason)
        report = ServingBenchReport(
            model.label,
            precision,
            config.users,
            config.duration,
            texts_per_request=config.texts_per_request,
            precision_requested=config.precision,
            precision_reason=reason,
        )
        config = replace(config, precision=precision)
        if "limit" in config.setups:
            seconds = config.limit_seconds or max(config.duration / 8, 0.5)
            run_limit(model.model_dir, texts, test, config.precision, seconds, report)
        if "naive" in config.setups:
            report.setups["naive"] = run_naive(model.model_dir, texts, config, workdir)
        if {"stack", "direct"} & set(config.setups):
            run_stack(model, texts, config, workdir, report)
        if set(PEERS) & set(config.setups):
            run_peers(model.model_dir, texts, config, workdir, report)
    return report
