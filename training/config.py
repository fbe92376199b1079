"""The training configuration: one typed dataclass, its command-line form and its JSON form.

``TrainConfig``'s fields, with their help texts, are the one list of training options. Both
command lines are ``transformers.HfArgumentParser`` over it (``build_parser``): ``python -m
training``, ``torchrun ... -m training`` and SageMaker script mode
(``training/sagemaker_entry.py``), and ``starrating train``, which adds its own
``--nproc-per-node`` and turns the config back into arguments when it launches torchrun. The
config used is saved as ``RUN/config.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

from starrating.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from transformers import HfArgumentParser

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
SPLIT_NAMES = ("train", "validation", "test")


class ConfigError(ValueError):
    """A training configuration that cannot work, with what to change."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def option_name(name: str) -> str:
    """The command-line flag of a ``TrainConfig`` field: ``max_steps`` -> ``--max-steps``."""
    return f"--{name.replace('_', '-')}"


@dataclass
class TrainConfig:
    """Everything that decides what a training run does."""

    out: Path = field(
        metadata=_help("Run directory: model/, metrics.json, config.json, plots/, mlflow.db.")
    )
    data: Path | None = field(
        default=None,
        metadata=_help(
            "Directory with train/validation/test .jsonl as written by `starrating data prepare`."
        ),
    )
    train: Path | None = field(
        default=None,
        metadata=_help(
            "Training split (a .jsonl[.gz] file or a directory of them); overrides "
            "DATA/train.jsonl."
        ),
    )
    validation: Path | None = field(
        default=None, metadata=_help("Validation split; overrides DATA/validation.jsonl.")
    )
    test: Path | None = field(
        default=None, metadata=_help("Test split; overrides DATA/test.jsonl.")
    )
    train_sharded_per_node: bool = field(
        default=False,
        metadata=_help(
            "Each node holds only its own part of the training split (SageMaker ShardedByS3Key): "
            "divide it among the node's processes, not all (sagemaker_entry.py reads "
            "inputdataconfig.json)."
        ),
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata=_help(
            "'minilm' (bundled all-MiniLM-L6-v2), a hub id or a local save_pretrained folder."
        ),
    )
    epochs: int = field(default=3, metadata=_help("Passes over the training split."))
    max_steps: int | None = field(
        default=None,
        metadata=_help("Stop after this many optimizer steps (overrides the epoch count)."),
    )
    batch_size: int = field(
        default=8,
        metadata=_help(
            "Global batch size: split evenly across processes, so results do not depend on how "
            "many processes share it."
        ),
    )
    lr: float = field(default=5e-5, metadata=_help("Peak learning rate of AdamW."))
    weight_decay: float = field(
        default=0.01, metadata=_help("AdamW weight decay (not on biases and LayerNorm).")
    )
    warmup_ratio: float = field(
        default=0.0, metadata=_help("Share of the steps with a linear learning-rate warmup.")
    )
    ordinal_weight: float = field(
        default=0.5,
        metadata=_help(
            "Weight of the expected distance in stars added to the cross-entropy "
            "(0 = plain cross-entropy)."
        ),
    )
    soft_labels: bool = field(
        default=False,
        metadata=_help(
            "Train against each review's distribution over stars (the 'distribution' of rows "
            "prepared from the embedded data: its raters' shares) instead of its one star; rows "
            "without one count as their star."
        ),
    )
    max_length: int = field(
        default=128, metadata=_help("Longest tokenised input; longer reviews are truncated.")
    )
    precision: Precision = field(
        default="auto",
        metadata=_help(
            "auto = bf16 on GPUs that support it, else fp16 with loss scaling; fp32 on CPU."
        ),
    )
    seed: int = field(default=42, metadata=_help("Seed of weights init, dropout and data order."))
    grad_clip: float = field(
        default=1.0, metadata=_help("Clip the gradient norm to this (0 = off).")
    )
    num_workers: int = field(
        default=1,
        metadata=_help("DataLoader worker processes per training process that read and tokenise."),
    )
    shuffle_buffer: int = field(
        default=10_000, metadata=_help("Reviews held in the seeded shuffle buffer.")
    )
    group_by_length: int = field(
        default=16,
        metadata=_help(
            "Batch reviews of similar length together within windows of this many batches, "
            "so batches carry less padding (0 = off)."
        ),
    )
    checkpoint_dir: Path | None = field(
        default=None, metadata=_help("Where checkpoints go (default RUN/checkpoints).")
    )
    checkpoint_every: int = field(
        default=100,
        metadata=_help(
            "Write a checkpoint every this many steps (0 = only at epoch ends and on SIGTERM)."
        ),
    )
    keep_checkpoints: int = field(
        default=2, metadata=_help("How many of the newest checkpoints to keep.")
    )
    resume: bool = field(
        default=False, metadata=_help("Continue from the newest valid checkpoint, if there is one.")
    )
    early_stop: bool = field(
        default=False, metadata=_help("Stop when a training rule finds an issue.")
    )
    log_every: int = field(
        default=10, metadata=_help("Log training metrics every this many steps.")
    )
    tracking_uri: str | None = field(
        default=None,
        metadata=_help(
            "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite store in the run "
            "directory)."
        ),
    )
    experiment: str = field(default="starrating", metadata=_help("MLflow experiment name."))
    tracking: bool = field(
        default=True,
        metadata=_help(
            "Record the run in MLflow. Turn it off on a machine without MLflow: metrics.json, "
            "history.json and plots/ are written all the same."
        ),
    )
    progress: bool = field(default=True, metadata=_help("Show a progress bar on rank 0."))

    def split_path(self, name: str) -> Path | None:
        """The file or directory of one split, explicit or under ``data``."""
        explicit: Path | None = getattr(self, name)
        if explicit is not None:
            return explicit
        if self.data is None:
            return None
        for candidate in (self.data / f"{name}.jsonl", self.data / f"{name}.jsonl.gz"):
            if candidate.exists():
                return candidate
        directory = self.data / name
        return directory if directory.is_dir() else None

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.out / "checkpoints"

    def validate(self) -> None:
        """Refuse combinations that cannot train, saying what to change."""
        if self.split_path("train") is None:
            where = f"{self.data}/train.jsonl" if self.data else "--train"
            raise ConfigError(
                f"no training split: {where} not found. Prepare one with "
                "`starrating data prepare --out DIR` and pass --data DIR."
            )
        if self.split_path("validation") is None:
            raise ConfigError(
                "no validation split: training needs one for evaluation, calibration and rules "
                "(DATA/validation.jsonl or --validation)."
            )
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        positive |= {"max_length": self.max_length, "log_every": self.log_every}
        positive |= {"keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{option_name(name)} must be positive, got {value}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"--max-steps must be positive, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in (
            "ordinal_weight",
            "num_workers",
            "checkpoint_every",
            "shuffle_buffer",
            "grad_clip",
            "group_by_length",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{option_name(name)} must not be negative")

    def local_batch_size(self, processes: int) -> int:
        """Each of ``processes`` training processes' share of the global batch; a batch that
        does not divide evenly among them is refused."""
        if self.batch_size % processes:
            raise ConfigError(
                f"--batch-size {self.batch_size} is the global batch and must divide evenly "
                f"among {processes} processes"
            )
        return self.batch_size // processes

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def to_args(self) -> list[str]:
        """The command-line arguments that parse back into this config."""
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            args += [option_name(f.name), str(value)]
        return args


_NONE = frozenset({"", "none", "null"})


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, except that ``None``, ``null`` or nothing mean no value."""

    def parse_or_none(text: str) -> Any:
        return None if text.strip().lower() in _NONE else parse(text)

    return parse_or_none


def build_parser(prog: str = "python -m training", *more: type[Any]) -> HfArgumentParser:
    """The command line of ``TrainConfig`` (and of the dataclasses ``more``: a launcher's own
    options), made by ``transformers.HfArgumentParser``: one option per field with the field's
    help and default; ``--max-steps`` and ``--max_steps`` both work (SageMaker passes
    hyperparameters with the names they were given); booleans take an optional true/false value
    and, when on by default, also have a ``--no-`` form. Here an optional field also takes
    ``None`` for no value."""
    from transformers import HfArgumentParser
    from transformers.hf_argparser import DataClassType

    parser = HfArgumentParser(
        [DataClassType(dataclass) for dataclass in (TrainConfig, *more)],
        prog=prog,
        description="Fine-tune an encoder to predict 1-5 stars.",
    )
    hints = get_type_hints(TrainConfig)
    optional = {name for name, hint in hints.items() if type(None) in get_args(hint)}
    for action in parser._actions:
        # --max-steps, then --max_steps: the dashed name leads in the usage and the help.
        action.option_strings = sorted(action.option_strings, key=lambda flag: "_" in flag)
        if action.dest in optional and callable(action.type):
            action.type = _none_or(action.type)
        elif action.const is False and action.nargs == 0:  # HfArgumentParser's --no-X
            flag = option_name(action.dest)
            action.help, action.default = f"The same as {flag} false.", argparse.SUPPRESS
    return parser


def parse_dataclasses(parser: HfArgumentParser, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """One instance of each of ``parser``'s dataclasses, the ``TrainConfig`` validated. An
    unknown argument or a configuration that cannot train stops the process with the reason and
    the usage (exit status 2), before anything is loaded."""
    *parsed, unknown = parser.parse_args_into_dataclasses(
        argv, return_remaining_strings=True, look_for_args_file=False
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    for config in parsed:
        if isinstance(config, TrainConfig):
            try:
                config.validate()
            except ConfigError as exc:
                parser.error(str(exc))
    return tuple(parsed)


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m training") -> TrainConfig:
    """Parse command-line arguments into a validated ``TrainConfig``."""
    (config,) = parse_dataclasses(build_parser(prog), argv)
    assert isinstance(config, TrainConfig)
    return config
