"""``python -m training`` and ``torchrun --nproc-per-node N -m training``: one training run.

The arguments are ``TrainConfig``'s fields (``training.config``); the exit status is
``training.run.run_training``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from training.config import parse_args
from training.run import configure_logging, run_training


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    return run_training(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
