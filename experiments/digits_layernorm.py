"""The 8×8 digits through a deeper MLP: linear, layer normalisation and tanh, twice, then cross-entropy."""

from __future__ import annotations

import torch

from experiments.lab.data import CROSS_ENTROPY_DTYPE, load_digits
from experiments.lab.metrics import accuracy
from experiments.lab.minibatches import Minibatches, split
from experiments.lab.registry import Config, OptimizerChoice, Setup, experiment


def layernorm_mlp(config: Config, width: int = 64) -> torch.nn.Sequential:
    """64 → (linear → LayerNorm → tanh) × 2 → linear → 10 logits."""
    torch.manual_seed(config.seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.LayerNorm(width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.LayerNorm(width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 10),
    ).to(dtype=config.torch_dtype, device=config.device)


@experiment(
    "digits-layernorm",
    "scikit-learn's 8×8 digits, 64-64-64-10 MLP with LayerNorm and tanh, cross-entropy, held-out accuracy",
    optimizer=OptimizerChoice(torch.optim.SGD, momentum=0.9),
    steps=1000,
    lr=0.05,
    batch_size=64,
    dtype=CROSS_ENTROPY_DTYPE,
)
def build(config: Config) -> Setup:
    pixels, labels = load_digits()
    options = dict(dtype=config.torch_dtype, device=config.device)
    x_train, label_train, x_test, label_test = split(pixels.to(**options), labels.to(config.device), 0.2, config.seed)
    return Setup(
        model=layernorm_mlp(config),
        loss_fn=torch.nn.CrossEntropyLoss(),
        batches=Minibatches(x_train, label_train, config.batch_size, config.seed),
        metrics={"held_out_accuracy": accuracy(x_test, label_test)},
        headline_metric="held_out_accuracy",
        metric_every=100,
        per_sample_every=50,
    )
