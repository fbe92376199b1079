"""One training run as a process runs it: the single entry of every way to train.

``python -m training`` (and torchrun), SageMaker script mode (``training/sagemaker_entry.py``),
``starrating train`` and ``starrating demo`` all call ``run_training``; the two script entries
call ``configure_logging`` first.

Exit status: 0 trained and saved; 2 bad configuration or data; 143 stopped by SIGTERM after
writing a checkpoint (continue with ``--resume``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import TrainConfig

logger = logging.getLogger(__name__)

# Exit status of a run stopped by SIGTERM after writing its checkpoint (128 + SIGTERM).
INTERRUPTED_EXIT_CODE = 143
BAD_INPUT_EXIT_CODE = 2


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


def run_training(config: TrainConfig) -> int:
    """Train with ``config`` in this process (joining torchrun's group when launched by it);
    the process exit status."""
    # Imported here: torch and transformers load only once logging is configured.
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data.readers import DataFormatError
    from training.loop import TrainingInterrupted, train

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
        return BAD_INPUT_EXIT_CODE
    return 0
