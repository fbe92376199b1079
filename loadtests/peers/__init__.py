"""The servers users pick instead of TorchServe, for ``starrating bench serving`` to run beside
the stack on the same model, numerics, threads and texts.

Each peer is set up the way its own docs recommend for a Hugging Face text classifier with
server-side batching, in a module of its own with a context manager that starts it on a free
loopback port and stops it with everything it started:

- ``ray-serve``: Ray Serve, ``@serve.batch`` (``ray_serve.py``);
- ``bentoml``: BentoML's adaptive batching, ``@bentoml.api(batchable=True)``
  (``bentoml_service.py``);
- ``litserve``: LitServe, ``max_batch_size``/``batch_timeout`` (``litserve_app.py``);
- ``torchserve-hf``: TorchServe with a handler in the style of its Hugging Face example, one
  tokenizer call per request (``torchserve_hf.py``).

Their frameworks are imported only when that peer runs (the ``bench`` extra installs them).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadtests.peers.launch import PeerEndpoint
    from loadtests.peers.rating import PeerSettings

RAY_SERVE = "ray-serve"
BENTOML = "bentoml"
LITSERVE = "litserve"
TORCHSERVE_HF = "torchserve-hf"

_STARTERS = {
    RAY_SERVE: "loadtests.peers.ray_serve:ray_serve_peer",
    BENTOML: "loadtests.peers.bentoml_service:bentoml_peer",
    LITSERVE: "loadtests.peers.litserve_app:litserve_peer",
    TORCHSERVE_HF: "loadtests.peers.torchserve_hf:torchserve_hf_peer",
}
PEERS: tuple[str, ...] = tuple(_STARTERS)


def running_peer(
    name: str, settings: PeerSettings, workdir: Path
) -> AbstractContextManager[PeerEndpoint]:
    """The peer ``name`` serving ``settings`` (started on enter, stopped on exit)."""
    if name not in _STARTERS:
        raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")
    module, attribute = _STARTERS[name].split(":")
    starter = getattr(import_module(module), attribute)
    context: AbstractContextManager[PeerEndpoint] = starter(settings, workdir)
    return context
