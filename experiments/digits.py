"""The 8×8 handwritten digits that ship inside scikit-learn: a 64-32-10 sigmoid MLP, MSE on one-hot targets."""

from __future__ import annotations

import torch

from experiments.lab.data import load_digits
from experiments.lab.metrics import accuracy
from experiments.lab.minibatches import Minibatches, split
from experiments.lab.models import sigmoid_mlp
from experiments.lab.registry import Config, Setup, experiment


@experiment(
    "digits",
    "scikit-learn's 8×8 digits, 64-32-10 sigmoid MLP, MSE on one-hot targets, held-out accuracy",
    steps=3000,
    lr=4.0,
    batch_size=32,
    dtype="float32",
)
def build(config: Config) -> Setup:
    pixels, labels = load_digits()
    options = dict(dtype=config.torch_dtype, device=config.device)
    x_train, label_train, x_test, label_test = split(pixels.to(**options), labels.to(config.device), 0.2, config.seed)
    one_hot = torch.nn.functional.one_hot(label_train, 10).to(config.torch_dtype)
    return Setup(
        model=sigmoid_mlp((64, 32, 10), config),
        loss_fn=torch.nn.MSELoss(),
        batches=Minibatches(x_train, one_hot, config.batch_size, config.seed),
        metrics={"held_out_accuracy": accuracy(x_test, label_test)},
        headline_metric="held_out_accuracy",
        metric_every=200,
    )
