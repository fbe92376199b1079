"""The training step: its parameter groups, its one step, and that it needs only torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import build_tiny_model
from training.config import TrainConfig
from training.step import TrainingStep, parameter_groups

REPO = Path(__file__).resolve().parents[2]


def test_biases_and_norms_are_not_decayed_and_frozen_parameters_are_left_out() -> None:
    model, _ = build_tiny_model(seed=0)
    model.distilbert.embeddings.word_embeddings.weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, weight_decay=0.3)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.3, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "distilbert.embeddings.word_embeddings.weight" not in decayed | exempt
    assert "pre_classifier.weight" in decayed and "classifier.weight" in decayed
    assert "pre_classifier.bias" in exempt and "distilbert.embeddings.LayerNorm.weight" in exempt
    assert all(n.endswith("bias") or "norm" in n.lower() for n in exempt)
    assert all(not n.endswith("bias") and "norm" not in n.lower() for n in decayed)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | exempt == trainable


def test_a_step_takes_the_settings_of_the_recipe_and_moves_the_weights(tmp_path: Path) -> None:
    model, tokenizer = build_tiny_model(seed=0)
    config = TrainConfig(out=tmp_path, lr=1e-2, weight_decay=0.2, grad_clip=0.5)
    step = TrainingStep.create(model, config, torch.device("cpu"), "fp16")
    assert [g["weight_decay"] for g in step.optimizer.param_groups] == [0.2, 0.0]
    assert all(g["lr"] == 1e-2 for g in step.optimizer.param_groups)
    assert step.scaler.is_enabled() and step.module is model
    assert (step.grad_clip, step.ordinal_weight) == (0.5, config.ordinal_weight)
    batch = dict(tokenizer(["i loved it", "really bad"], return_tensors="pt", padding=True))
    batch["labels"] = torch.tensor([4, 0])
    before = [p.detach().clone() for p in model.parameters()]
    loss = step.take(batch)
    assert torch.isfinite(loss) and not loss.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_the_step_imports_only_torch() -> None:
    """So that a bare GPU machine (no scikit-learn, SciPy, MLflow or transformers) can run it."""
    script = (
        "import json, sys; before = set(sys.modules); import training.step; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    ours = {"training", "starrating", "handlers", "loadtests", "serving", "api", "abtesting"}
    heavy = {"transformers", "sklearn", "scipy", "mlflow", "pandas", "matplotlib", "tokenizers"}
    assert loaded & ours == {"training"} and not loaded & heavy
    assert {n for n in json.loads(result.stdout) if n.startswith("training")} == {
        "training",
        "training.step",
    }
