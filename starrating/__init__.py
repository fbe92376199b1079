"""starrating: the core shared by training and serving.

Reading the label scheme (``starrating.labels``) imports neither torch nor transformers; the
tokenisation and artefact helpers are loaded on first use so the gateway stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starrating.labels import ID2LABEL, LABEL2ID, NUM_LABELS, STARS, id_to_star, star_to_id

__version__ = "0.1.0"

if TYPE_CHECKING:
    from starrating.artifacts import load_artifacts, save_artifacts
    from starrating.text import encode_batch, normalize_text

_LAZY = {
    "encode_batch": "starrating.text",
    "normalize_text": "starrating.text",
    "save_artifacts": "starrating.artifacts",
    "load_artifacts": "starrating.artifacts",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'starrating' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "ID2LABEL",
    "LABEL2ID",
    "NUM_LABELS",
    "STARS",
    "__version__",
    "encode_batch",
    "id_to_star",
    "load_artifacts",
    "normalize_text",
    "save_artifacts",
    "star_to_id",
]
