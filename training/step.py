"""The training step of the recipe, written once: the loss, the parameter groups, AdamW, the
gradient scaler and autocast for a precision, and the step itself.

``training.loop`` trains with it, and ``loadtests.gpu_check`` measures it, so the throughput a
GPU check reports is that of the step users train with. It imports only torch: a bare GPU
machine without scikit-learn, SciPy or MLflow (which the loop's evaluation and tracking need)
can run it.

One step: the forward pass in one autocast context, the loss in fp32, backward (scaled for fp16),
gradients unscaled before clipping, the optimizer step through the scaler, the scaler's update,
``zero_grad(set_to_none=True)``. The learning-rate schedule is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

ResolvedPrecision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Autocast = Callable[[], AbstractContextManager[Any]]


class Recipe(Protocol):
    """The settings a step depends on (``training.config.TrainConfig`` has them)."""

    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def grad_clip(self) -> float: ...
    @property
    def ordinal_weight(self) -> float: ...


def resolve_precision(requested: str, device: torch.device) -> ResolvedPrecision:
    """auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if requested in ("fp32", "bf16", "fp16"):
        return requested  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_for(device: torch.device, precision: ResolvedPrecision) -> Autocast:
    """A factory of the one autocast context every forward pass runs in."""
    return lambda: torch.autocast(
        device_type=device.type, dtype=DTYPES[precision], enabled=precision != "fp32"
    )


def make_scaler(device: torch.device, precision: ResolvedPrecision) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's range; with fp32 it passes through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def rating_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ordinal_weight: float,
    distribution: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy plus ``ordinal_weight`` times the expected distance in stars between the
    predicted distribution and the true rating: stars are ordered, so 1 star for a 5-star
    review should cost more than 4 stars. With ``distribution`` (soft labels: the raters'
    shares per star) both are taken against it instead of the one star. Computed in fp32
    whatever the autocast dtype (log-softmax in half precision loses digits)."""
    logits = logits.float()
    # cross_entropy takes class probabilities as the target too.
    loss = F.cross_entropy(logits, labels if distribution is None else distribution)
    if ordinal_weight:
        classes = torch.arange(logits.shape[-1], device=logits.device)
        if distribution is None:
            distance = (classes[None, :] - labels[:, None]).abs().float()
        else:  # the expected distance to a star drawn from the distribution
            distance = distribution @ (classes[None, :] - classes[:, None]).abs().float()
        loss = loss + ordinal_weight * (logits.softmax(-1) * distance).sum(-1).mean()
    return loss


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups: weight decay on the weight matrices and embeddings; none on biases
    and normalisation weights (as in BERT's recipe). Frozen parameters are left out."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``, fused on CUDA and CPU."""
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay), lr=lr, fused=device.type in ("cuda", "cpu")
    )


def forward_backward(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    autocast: Autocast,
    scaler: torch.amp.GradScaler,
    weight: float = 1.0,
    ordinal_weight: float = 0.0,
) -> torch.Tensor:
    """The loss of a batch, backpropagated (scaled for fp16, times ``weight``)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index", "distribution")}
    with autocast():
        logits = model(**inputs).logits
    loss = rating_loss(logits, batch["labels"], ordinal_weight, batch.get("distribution"))
    scaler.scale(loss * weight).backward()  # type: ignore[no-untyped-call]
    return loss.detach()


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> None:
    """Clip the unscaled gradients, step through the scaler, update it, drop the gradients."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class TrainingStep:
    """The recipe's optimizer step on one model: ``take(batch)`` is forward, loss, backward,
    unscale, clip, step and zero_grad; the optimizer and scaler are here for checkpoints."""

    module: torch.nn.Module  # what the forward pass runs: the model or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Autocast
    grad_clip: float
    ordinal_weight: float

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        recipe: Recipe,
        device: torch.device,
        precision: ResolvedPrecision,
        module: torch.nn.Module | None = None,
    ) -> TrainingStep:
        """The step for ``model`` (already on ``device``); ``module`` is its DDP wrapper when
        there is one (the optimizer's groups are named after ``model``'s parameters)."""
        return cls(
            module=model if module is None else module,
            optimizer=build_optimizer(model, recipe.lr, recipe.weight_decay, device),
            scaler=make_scaler(device, precision),
            autocast=autocast_for(device, precision),
            grad_clip=recipe.grad_clip,
            ordinal_weight=recipe.ordinal_weight,
        )

    def take(self, batch: Mapping[str, torch.Tensor], weight: float = 1.0) -> torch.Tensor:
        """One optimizer step on ``batch`` (its loss counted ``weight`` times); the loss, still
        on the device."""
        loss = forward_backward(
            self.module, batch, self.autocast, self.scaler, weight, self.ordinal_weight
        )
        optimizer_step(self.module, self.optimizer, self.scaler, self.grad_clip)
        return loss
