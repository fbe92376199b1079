"""Archive the tests' tiny DistilBERT as two versions into a model store (`make compose-up` on a
checkout without .mar files): `python deploy/docker/tiny_model_store.py model_store [1.0 2.0]`.

Real .mar files of a real (randomly initialised, 2-layer) model, so the compose stack and the
container tests exercise the same handler and archive format as production, in seconds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.serving.helpers import build_tiny_archives


def main(argv: list[str]) -> None:
    store = Path(argv[0])
    versions = argv[1:] or ["1.0", "2.0"]
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as runs:
        build_tiny_archives(store, Path(runs), {v: seed for seed, v in enumerate(versions)})
    for version in versions:
        sys.stdout.write(f"archived {store / f'stars-{version}.mar'}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
