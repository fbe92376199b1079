"""Mixed precision on CPU: bf16 autocast trains; fp16 loss scaling unscales before clipping."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from starrating.text import encode_batch
from tests.conftest import build_tiny_model
from training.step import autocast_for, forward_backward, optimizer_step, resolve_precision

CPU = torch.device("cpu")
TEXTS = ["i loved it", "really bad", "it's ok", "works well", "terrible quality"]


def _batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    batch = dict(encode_batch(tokenizer, TEXTS))
    batch["labels"] = torch.tensor([4, 0, 2, 3, 0])
    return batch


def test_auto_precision_is_fp32_on_cpu_and_explicit_choices_stand() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_bf16_autocast_runs_a_training_step_on_cpu() -> None:
    model, tokenizer = build_tiny_model(seed=0)
    batch = _batch(tokenizer)
    autocast = autocast_for(CPU, "bf16")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with autocast():
        assert model(**inputs).logits.dtype == torch.bfloat16
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for _ in range(5):
        losses.append(float(forward_backward(model, batch, autocast, scaler)))
        optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # it learns the five examples
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fp16_gradients_are_unscaled_before_clipping() -> None:
    """With SGD(lr=1) the update is the clipped gradient: clipping the still-scaled gradient
    would shrink the update by the loss scale (1024 here)."""
    model, tokenizer = build_tiny_model(seed=0)
    model.eval()  # no dropout: the step is deterministic
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    forward_backward(model, _batch(tokenizer), autocast_for(CPU, "fp16"), scaler)
    scaled_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    optimizer_step(model, optimizer, scaler, grad_clip=1e-3)
    with torch.no_grad():
        update = torch.norm(
            torch.stack([(a - b).norm() for a, b in zip(before, model.parameters(), strict=True)])
        )
    assert float(scaled_norm) > 1e-3 * 1024  # clipping was active
    assert float(update) == pytest.approx(1e-3, rel=1e-2)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)
