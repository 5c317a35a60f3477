"""The classic XOR problem: 4 samples no linear model separates, learned by a 2-4-1 sigmoid MLP."""

from __future__ import annotations

import torch

from experiments.metrics import accuracy
from experiments.minibatches import Minibatches
from experiments.registry import Config, Setup, experiment


@experiment(
    "xor",
    "the 4-sample XOR problem, 2-4-1 sigmoid MLP with biases, full-batch gradient descent",
    full_batch=True,
    steps=3000, lr=5.0, batch_size=None, dtype="float32",
)
def build(config: Config) -> Setup:
    options = dict(dtype=config.torch_dtype, device=config.device)
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], **options)
    y = torch.tensor([[0], [1], [1], [0]], **options)
    torch.manual_seed(config.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 1), torch.nn.Sigmoid()
    ).to(**options)
    return Setup(
        model=model,
        loss_fn=torch.nn.MSELoss(),
        batches=Minibatches(x, y, batch_size=None),
        metrics={"accuracy": accuracy(x, y[:, 0].long())},
        headline_metric="accuracy",
    )
