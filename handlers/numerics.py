"""Inference numerics of the stars model: fp32, bf16, or dynamic int8 (CPU only), and ``auto``.

``auto`` (the default) is fast where it costs no accuracy. At archive time ``measure_numerics``
rates the run's validation split in every numerics and keeps those that lose at most
``TOLERANCE_POINTS`` accuracy points against fp32 *and* change at most that share (in percent)
of fp32's predictions (``numerics.json`` in the archive). The second bound is what makes the
first hold on other data: a numerics that changes 3% of the answers can score level on one
small split and lose points on the next (int8 here: -0.27 points on 370 validation reviews,
-1.6 on the test split); one that changes at most 0.5% of them cannot move accuracy by more
than 0.5 points on data like it. The share is measured on a few hundred reviews, where one
review is 0.27%, so it is refused when it is *significantly* above the bound (one-sided
binomial test at ``CHANGED_SIGNIFICANCE``): int8's 24 of 370 changed answers are (p ~ 4e-19);
bf16's 2 of 370 near-ties are not (p = 0.55), where a plain ``> 0.5%`` served fp32 at 0.6
times bf16's speed on a CPU with AVX512-BF16. The handler
then picks, on the device it runs on, the fastest kept one: bf16 on a GPU with bf16 and on a CPU
with AVX512-BF16 or AMX (elsewhere bf16 is emulated and slow), int8 on other CPUs, fp32
otherwise. ``int8`` quantizes the weights of every ``nn.Linear`` per output channel,
dynamically (activations are quantized per batch at run time); per-channel weights lose
less accuracy than per-tensor ones (1.1 vs 5.7 test points on an earlier MiniLM run).
``bf16`` casts all weights. The benchmark's in-process limit uses ``apply_precision`` too, so
it and the handler always run identical numerics.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

from handlers import RUN_SUBDIR

if TYPE_CHECKING:
    from starrating.artifacts import Artifacts

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")
AUTO: Literal["auto"] = "auto"
PrecisionChoice = Literal["auto", "fp32", "bf16", "int8"]
PRECISION_CHOICES: tuple[PrecisionChoice, ...] = ("auto", *PRECISIONS)

TOLERANCE_POINTS = 0.5
"""``auto`` keeps a numerics whose validation accuracy is at most this many points below fp32
and which does not change significantly more than this many percent of fp32's predictions."""
CHANGED_SIGNIFICANCE = 0.05
"""``auto`` refuses a numerics whose share of changed predictions is above ``TOLERANCE_POINTS``
percent at this significance (one-sided binomial test on the measured split)."""
NUMERICS_FILE = "numerics.json"
"""The archive's record of the numerics measured at archive time (under ``run/``)."""

ModelT = TypeVar("ModelT", bound=torch.nn.Module)


def apply_precision(model: ModelT, precision: str) -> ModelT:
    """``model`` in ``precision`` for inference (int8 returns a quantized copy)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    device = next(model.parameters()).device
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU only, not on {device}")
    with warnings.catch_warnings():
        # torch >= 2.10 points eager-mode quantization users at torchao; the API still works.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        quantized: ModelT = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model,
            {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
        )
    return quantized


@dataclass(frozen=True)
class NumericsRecord:
    """What the archive measured: accuracy per numerics on a split, and which ones ``auto`` may use.

    ``requested`` is what the archive was asked for; anything but ``auto`` is used as is.
    ``changed`` is the share of fp32's predictions each numerics changes. ``kept`` holds fp32
    and every numerics within ``tolerance_points`` of it on both counts; ``refused`` says why
    each other one was left out.
    """

    requested: PrecisionChoice
    split: str = ""
    rows: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    changed: dict[str, float] = field(default_factory=dict)
    tolerance_points: float = TOLERANCE_POINTS
    kept: tuple[Precision, ...] = ("fp32",)
    refused: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kept": list(self.kept)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NumericsRecord:
        try:
            record = cls(
                requested=data["requested"],
                split=str(data.get("split", "")),
                rows=int(data.get("rows", 0)),
                accuracy={str(k): float(v) for k, v in data.get("accuracy", {}).items()},
                changed={str(k): float(v) for k, v in data.get("changed", {}).items()},
                tolerance_points=float(data.get("tolerance_points", TOLERANCE_POINTS)),
                kept=tuple(data.get("kept", ("fp32",))),
                refused={str(k): str(v) for k, v in data.get("refused", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed {NUMERICS_FILE}: {exc!r}") from exc
        if record.requested not in PRECISION_CHOICES or not set(record.kept) <= set(PRECISIONS):
            raise ValueError(f"malformed {NUMERICS_FILE}: unknown numerics in {data}")
        return record

    def summary(self) -> str:
        """One line for people: the accuracies, and what ``auto`` may serve."""
        if self.requested != AUTO:
            head = f"numerics {self.requested} (chosen when archived)"
        else:
            faster = [p for p in self.kept if p != "fp32"]
            head = "numerics auto: " + (
                f"{' or '.join(faster)} where the device runs it natively, else fp32"
                if faster
                else "fp32"
            )
        measured = [
            f"{name} {100 * value:.2f}%"
            + (
                f" ({100 * (value - self.accuracy['fp32']):+.2f}, "
                f"{100 * self.changed.get(name, 0.0):.1f}% of answers changed)"
                if name != "fp32"
                else ""
            )
            for name, value in self.accuracy.items()
        ]
        parts = [head]
        if measured:
            parts.append(f"accuracy on {self.split} ({self.rows} rows): " + ", ".join(measured))
        parts += [f"{name} left out: {why}" for name, why in self.refused.items()]
        return "; ".join(parts)

    @classmethod
    def read(cls, path: Path) -> NumericsRecord | None:
        """The record at ``path``; None when the archive has none (archived before it existed)."""
        if not path.is_file():
            return None
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def changed_above_tolerance(share: float, rows: int) -> float:
    """p-value of "a numerics changes more than ``TOLERANCE_POINTS`` percent of predictions",
    given that it changed ``share`` of ``rows`` (one-sided exact binomial test)."""
    from scipy.stats import binomtest  # archive time only: the handler never measures

    changed = round(share * rows)
    return float(binomtest(changed, rows, TOLERANCE_POINTS / 100, alternative="greater").pvalue)


def measure_numerics(
    artifacts: Artifacts,
    texts: Sequence[str],
    stars: Sequence[int],
    *,
    requested: PrecisionChoice = "auto",
    split: str = "validation",
) -> NumericsRecord:
    """Accuracy of each numerics the device can run on ``texts``, and the ones within tolerance."""
    from dataclasses import replace

    if len(texts) != len(stars) or not texts:
        raise ValueError("need as many true stars as texts, and at least one text")
    device = next(artifacts.model.parameters()).device
    reference = artifacts.predict_stars(texts)
    accuracy = {"fp32": _share_equal(reference, stars)}
    changed: dict[str, float] = {}
    kept: list[Precision] = ["fp32"]
    refused: dict[str, str] = {}
    for precision in PRECISIONS[1:]:
        if precision == "int8" and device.type != "cpu":
            refused[precision] = f"runs on CPU only, and this archive was measured on {device}"
            continue
        # bf16 casts the weights in place; a copy keeps the caller's fp32 model intact.
        model = apply_precision(copy.deepcopy(artifacts.model), precision)
        predicted = replace(artifacts, model=model).predict_stars(texts)
        del model
        accuracy[precision] = _share_equal(predicted, stars)
        changed[precision] = 1.0 - _share_equal(predicted, reference)
        change = 100.0 * (accuracy[precision] - accuracy["fp32"])
        if change < -TOLERANCE_POINTS:
            refused[precision] = (
                f"{change:+.2f} accuracy points against fp32 on {split} "
                f"(more than {TOLERANCE_POINTS} lost)"
            )
        elif (p_value := changed_above_tolerance(changed[precision], len(texts))) < (
            CHANGED_SIGNIFICANCE
        ):
            refused[precision] = (
                f"changes {100 * changed[precision]:.2f}% of fp32's predictions on {split} "
                f"({change:+.2f} accuracy points there, but on other data the change may be "
                f"up to that share; significantly more than {TOLERANCE_POINTS}%, "
                f"p = {p_value:.2g})"
            )
        else:
            kept.append(precision)
    return NumericsRecord(
        requested=requested,
        split=split,
        rows=len(texts),
        accuracy=accuracy,
        changed=changed,
        kept=tuple(kept),
        refused=refused,
    )


def _share_equal(left: Sequence[int], right: Sequence[int]) -> float:
    return sum(a == b for a, b in zip(left, right, strict=True)) / len(left)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (else bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        # The checks torch's own CPU kernels use (torch.cpu has no public name for them).
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def choose_precision(
    configured: PrecisionChoice, record: NumericsRecord | None, device: torch.device
) -> tuple[Precision, str]:
    """The numerics to serve on ``device`` and why.

    ``configured`` (the handler's setting, ``STARRATING_HANDLER_PRECISION`` included) wins
    unless it is ``auto``; then the archive's explicit choice; then the fastest kept numerics.
    """
    if configured != AUTO:
        return configured, "set in the handler configuration"
    if record is None:
        return "fp32", f"the archive has no {NUMERICS_FILE} (archived before auto existed)"
    if record.requested != AUTO:
        return record.requested, "chosen when archived"
    fast_bf16 = has_fast_bf16(device)
    if "bf16" in record.kept and fast_bf16:
        return "bf16", f"{device.type} computes bf16 natively; {_accuracy_note(record, 'bf16')}"
    if "int8" in record.kept and device.type == "cpu":
        return "int8", f"CPU without bf16 kept; {_accuracy_note(record, 'int8')}"
    reasons = [f"{name}: {why}" for name, why in record.refused.items()]
    if "bf16" in record.kept and not fast_bf16:
        reasons.append(f"bf16: {device.type} has no native bf16")
    return "fp32", "; ".join(reasons) or "no faster numerics kept"


def archive_precision(
    configured: PrecisionChoice, archive_dir: Path, device: torch.device
) -> tuple[NumericsRecord | None, Precision, str]:
    """What an unpacked archive is served with on ``device``: its record (``run/numerics.json``;
    None when it was archived before there was one) and ``choose_precision``'s numerics and
    reason for it."""
    record = NumericsRecord.read(archive_dir / RUN_SUBDIR / NUMERICS_FILE)
    return (record, *choose_precision(configured, record, device))


def _accuracy_note(record: NumericsRecord, precision: str) -> str:
    change = 100.0 * (record.accuracy[precision] - record.accuracy["fp32"])
    return f"{change:+.2f} accuracy points against fp32 on {record.split} ({record.rows} rows)"
