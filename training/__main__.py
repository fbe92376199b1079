"""``python -m training`` and ``torchrun --nproc-per-node N -m training``: one training run.

Exit status: 0 trained and saved; 2 bad configuration or data; 143 stopped by SIGTERM after
writing a checkpoint (continue with ``--resume``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from training.config import TrainConfig, parse_args

logger = logging.getLogger("training")


def configure_logging() -> None:
    """Plain timestamped lines (readable by SageMaker's metric regexes); ranks other than 0
    report warnings and errors only."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "httpx", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(config: TrainConfig) -> int:
    """Train with ``config``; the process exit status."""
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data.readers import DataFormatError
    from training.loop import INTERRUPTED_EXIT_CODE, TrainingInterrupted, train

    try:
        train(config)
    except TrainingInterrupted as stop:
        if stop.checkpoint is not None:  # rank 0 wrote it
            logger.warning(
                "stopped by SIGTERM; checkpoint %s. Continue with the same command and --resume.",
                stop.checkpoint,
            )
        return INTERRUPTED_EXIT_CODE
    except (ConfigError, DataFormatError, CheckpointError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
