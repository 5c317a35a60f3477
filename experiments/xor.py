"""The classic XOR problem: 4 samples no linear model separates, learned by a 2-4-1 sigmoid MLP."""

from __future__ import annotations

import torch

from experiments.lab.metrics import accuracy
from experiments.lab.minibatches import Minibatches
from experiments.lab.models import sigmoid_mlp
from experiments.lab.registry import Config, Setup, experiment


@experiment(
    "xor",
    "the 4-sample XOR problem, 2-4-1 sigmoid MLP with biases",
    full_batch=True,
    steps=3000,
    lr=5.0,
    batch_size=None,
    dtype="float32",
)
def build(config: Config) -> Setup:
    options = dict(dtype=config.torch_dtype, device=config.device)
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], **options)
    y = torch.tensor([[0], [1], [1], [0]], **options)
    return Setup(
        model=sigmoid_mlp((2, 4, 1), config),
        loss_fn=torch.nn.MSELoss(),
        batches=Minibatches(x, y, batch_size=None),
        metrics={"accuracy": accuracy(x, y[:, 0].long())},
        headline_metric="accuracy",
    )
