"""A real TorchServe for tests: tiny archived versions, free ports, its own home; always stopped.

Importable from any test (``from tests.serving.helpers import running_torchserve``)::

    store = build_tiny_archives(tmp / "store", tmp / "runs", {"1.0": 0, "2.0": 1})
    with running_torchserve(tmp / "home", tmp / "store") as ts:
        client = ts.client()          # an serving.torchserve.TorchServeClient with the right keys
        ...                           # ts.inference_url, ts.management_url, ts.metrics_url

``tests/serving/conftest.py`` wraps this in a module-scoped ``torchserve`` fixture.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from serving.launcher import ServingStack, StackPlan, running_stack
from serving.paths import ServingPaths
from serving.torchserve import TorchServeClient, TorchServeKeys, TorchServeSyncClient
from serving.torchserve_config import TorchServeOptions


def build_tiny_archives(
    model_store: Path, runs: Path, seeds_by_version: Mapping[str, int]
) -> dict[str, Path]:
    """Archive one tiny DistilBERT per version (weights from its seed); the run dirs by version."""
    from starrating.artifacts import save_artifacts
    from tests.conftest import build_tiny_model
    from training.archive import archive_run

    run_dirs: dict[str, Path] = {}
    for version, seed in seeds_by_version.items():
        run = runs / f"run-{version}"
        model, tokenizer = build_tiny_model(seed=seed)
        save_artifacts(run / "model", model, tokenizer, max_length=64)
        archive_run(run, version, model_store)
        run_dirs[version] = run
    return run_dirs


@dataclass(frozen=True)
class RunningTorchServe(ServingStack):
    """A launched stack whose TorchServe a test talks to directly, with the right keys."""

    @classmethod
    def of(cls, stack: ServingStack) -> RunningTorchServe:
        return cls(**{f.name: getattr(stack, f.name) for f in fields(stack)})

    def keys(self) -> TorchServeKeys:
        if not self.options.token_auth:
            return TorchServeKeys()
        return TorchServeKeys.read(self.paths.key_file)

    def client(self, **kwargs: Any) -> TorchServeClient:
        return TorchServeClient(
            self.inference_url, self.management_url, key_file=self.key_file, **kwargs
        )

    def sync_client(self, **kwargs: Any) -> TorchServeSyncClient:
        return TorchServeSyncClient(
            self.inference_url, self.management_url, key_file=self.key_file, **kwargs
        )


@contextmanager
def running_torchserve(
    home: Path,
    model_store: Path,
    *,
    token_auth: bool = True,
    default_version: str | None = None,
) -> Iterator[RunningTorchServe]:
    """Start TorchServe on free loopback ports with every archive registered; stop it after."""
    plan = StackPlan(
        paths=ServingPaths.under(home),
        torchserve=TorchServeOptions.on_free_ports(model_store, token_auth=token_auth),
        default_version=default_version,
    )
    with running_stack(plan) as stack:
        yield RunningTorchServe.of(stack)


def starrating(
    *args: str, env: Mapping[str, str], timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``starrating`` command as a user would; never raises on failure."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "starrating"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
