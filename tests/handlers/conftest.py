"""A TorchServe context for running the handler in-process, built from TorchServe's own classes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ts
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handlers import MODEL_SUBDIR
from handlers.star_handler import StarHandler

REPO = Path(__file__).resolve().parents[2]
MODEL_CONFIG = REPO / "handlers" / "model-config.yaml"
TS_METRICS_YAML = Path(str(ts.__file__)).parent / "configs" / "metrics.yaml"


def make_context(model_dir: Path, version: str = "1.0", yaml_config: Any = None) -> Context:
    """What TorchServe hands ``initialize``: manifest, model_dir, metrics cache, yaml config."""
    metrics = MetricsCacheYamlImpl(config_file_path=str(TS_METRICS_YAML))
    metrics.initialize_cache()
    manifest = {"model": {"modelName": "stars", "modelVersion": version, "handler": "x.py"}}
    if yaml_config is None:
        yaml_config = yaml.safe_load(MODEL_CONFIG.read_text())
    return Context(
        "stars", str(model_dir), manifest, 8, None, "0.12.0", metrics=metrics,
        model_yaml_config=yaml_config,
    )  # fmt: skip


def start_batch(context: Context, size: int) -> None:
    """What TorchServe's Service.predict sets on the context before each batch."""
    context.request_ids = {i: f"req-{i}" for i in range(size)}
    context.request_processor = [RequestProcessor({}) for _ in range(size)]
    context.metrics.request_ids = context.request_ids


@pytest.fixture(scope="session")
def handler_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TorchServe's extracted model dir: the saved model under ``model/`` as the archive has it."""
    model_dir = tmp_path_factory.mktemp("extracted-mar")
    shutil.copytree(tiny_model_dir, model_dir / MODEL_SUBDIR)
    return model_dir


@pytest.fixture
def run_batch(handler_model_dir: Path) -> Callable[..., tuple[list[Any], list[int]]]:
    """Run one TorchServe batch through a fresh handler: (answers, per-request HTTP statuses)."""
    context = make_context(handler_model_dir)
    handler = StarHandler()
    handler.initialize(context)

    def run(rows: list[dict[str, Any]]) -> tuple[list[Any], list[int]]:
        start_batch(context, len(rows))
        answers = handler.handle(rows, context)
        statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
        return answers, statuses

    return run


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Any:
    """initialize() sets torch's thread count for the process; give other tests theirs back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
