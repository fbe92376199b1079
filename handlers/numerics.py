"""Inference numerics of the stars model: fp32 (default), bf16, or dynamic int8 (CPU only).

Opt-in speed-ups for CPU serving. ``int8`` quantizes the weights of every ``nn.Linear`` layer
per output channel, dynamically (activations are quantized per batch at run time); per-channel
weights lost 1.1 test-accuracy points on the trained MiniLM where per-tensor weights lost 5.7.
``bf16`` casts all weights (fast where the CPU has AVX512-BF16/AMX, slow where it has not).
Both change predictions slightly: ``starrating bench serving --precision`` measures the test
accuracy of each beside its speed-up. The benchmark's in-process limit uses this same function,
so it and the handler always run identical numerics.
"""

from __future__ import annotations

import warnings
from typing import Literal, TypeVar

import torch

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")

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
