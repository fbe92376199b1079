"""Peer: TorchServe with a handler in the style of TorchServe's Hugging Face example.

``examples/Huggingface_Transformers`` in pytorch/serve is where a TorchServe user starts with a
text classifier: its handler reads its settings from a JSON file in the archive, tokenises each
request on its own, padded to the configured max length so that the per-request tensors can be
joined with ``torch.cat``, and runs one forward pass over the joined batch. ``HFExampleHandler``
does the same, written here: one tokenizer call per text (``starrating.text.normalize_text``,
truncated and padded to the model's max length), ``torch.cat``, one forward pass, the stack's
numerics and torch threads. A malformed request fails its whole TorchServe batch, as in the
example. TorchServe batches up to ``MAX_BATCH_SIZE`` requests waiting ``MAX_WAIT_S`` at most,
the bounds every peer gets; one worker (the example registers 3 workers with batch 4 and a 5 s
delay, which would overcommit two cores and hold a lone request for 5 s).

TorchServe loads this file from the archive as the handler module; ``torchserve_hf_peer``
archives it with the model and runs it in a TorchServe of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from loadtests.peers import TORCHSERVE_HF
from loadtests.peers.launch import PeerEndpoint, wait_until_answers
from loadtests.peers.rating import (
    MAX_BATCH_SIZE,
    MAX_WAIT_S,
    PeerSettings,
    answer,
    load_peer_artifacts,
    predictions,
    request_texts,
)
from starrating.artifacts import Artifacts
from starrating.text import normalize_text

MODEL_NAME = "stars_hf"
SETUP_CONFIG = "setup_config.json"
"""The handler's settings in the archive, named as in the example."""
MODEL_DIR = "model"

Encoded = dict[str, torch.Tensor]


class HFExampleHandler(BaseHandler):  # type: ignore[misc]
    """One tokenizer call per text, padded to max length, ``torch.cat``, one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: Artifacts | None = None

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        settings = PeerSettings.from_json((model_dir / SETUP_CONFIG).read_text())
        self.artifacts = load_peer_artifacts(replace(settings, model_dir=model_dir / MODEL_DIR))
        self.initialized = True

    def preprocess(self, data: Sequence[Mapping[str, Any]]) -> tuple[Encoded, list[int]]:
        assert self.artifacts is not None, "initialize() must run first"
        encoded: list[Encoded] = []
        counts: list[int] = []
        for row in data:
            texts = request_texts(row.get("data") or row.get("body"))
            for text in texts:
                encoded.append(
                    dict(
                        self.artifacts.tokenizer(
                            normalize_text(text),
                            max_length=self.artifacts.max_length,
                            padding="max_length",
                            truncation=True,
                            return_tensors="pt",
                        )
                    )
                )
            counts.append(len(texts))
        batch = {key: torch.cat([one[key] for one in encoded]) for key in encoded[0]}
        return batch, counts

    def inference(
        self, data: tuple[Encoded, list[int]], *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, list[int]]:
        assert self.artifacts is not None, "initialize() must run first"
        batch, counts = data
        with torch.inference_mode():
            logits = self.artifacts.model(**batch).logits
        return self.artifacts.probabilities(logits), counts

    def postprocess(self, data: tuple[torch.Tensor, list[int]]) -> list[dict[str, Any]]:
        probabilities, counts = data
        rated = predictions(probabilities)
        answers: list[dict[str, Any]] = []
        start = 0
        for count in counts:
            answers.append(answer(rated[start : start + count]))
            start += count
        return answers


def archive(settings: PeerSettings, store: Path, staging: Path) -> Path:
    """A .mar of this handler, the model and its ``setup_config.json``, in ``store``."""
    payload = staging / "payload"
    shutil.copytree(settings.model_dir, payload / MODEL_DIR)
    (payload / SETUP_CONFIG).write_text(replace(settings, model_dir=Path(MODEL_DIR)).to_json())
    (staging / "tmp").mkdir()
    store.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        MODEL_NAME,
        "--version",
        "1.0",
        "--handler",
        __file__,
        "--extra-files",
        str(payload),
        "--export-path",
        str(store),
    ]
    result = subprocess.run(
        command,
        env={**os.environ, "TMPDIR": str(staging / "tmp")},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {result.stderr.strip()[-2000:]}")
    return store / f"{MODEL_NAME}.mar"


@contextmanager
def torchserve_hf_peer(settings: PeerSettings, workdir: Path) -> Iterator[PeerEndpoint]:
    """TorchServe (token auth off, free loopback ports) serving only this handler's archive."""
    from serving.paths import ServingPaths
    from serving.processes import running_pid
    from serving.torchserve import TorchServeSyncClient
    from serving.torchserve_config import TorchServeOptions
    from serving.torchserve_process import TORCHSERVE_MAIN_CLASS, start_torchserve, stop_torchserve

    home = workdir / TORCHSERVE_HF
    store = home / "model_store"
    mar = archive(settings, store, home / "staging")
    paths = ServingPaths.under(home)
    options = TorchServeOptions.on_free_ports(store, token_auth=False)
    start_torchserve(paths, options, [])
    try:
        with TorchServeSyncClient(
            options.inference_url, options.management_url, model_name=MODEL_NAME, timeout=300.0
        ) as client:
            client.register(
                mar.name,
                initial_workers=1,
                synchronous=True,
                batch_size=MAX_BATCH_SIZE,
                max_batch_delay_ms=round(1000 * MAX_WAIT_S),
            )
        endpoint = PeerEndpoint(options.inference_url, f"/predictions/{MODEL_NAME}")
        log = paths.torchserve_logs / "model_log.log"
        pid_file = paths.torchserve_pid
        wait_until_answers(
            TORCHSERVE_HF,
            endpoint,
            lambda: running_pid(pid_file, TORCHSERVE_MAIN_CLASS) is not None,
            log,
        )
        yield endpoint
    finally:
        stop_torchserve(paths)
