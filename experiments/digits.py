"""The 8×8 handwritten digits that ship inside scikit-learn: a 64-32-10 sigmoid MLP, MSE on one-hot targets."""

from __future__ import annotations

import torch

from experiments.metrics import accuracy
from experiments.minibatches import Minibatches, split
from experiments.models import sigmoid_mlp
from experiments.registry import Config, Setup, experiment

# For the digits experiments trained with cross-entropy. Its gradient p − q cancels as the fit nears perfect,
# and torchbp's e^{log p} (torch.exp) differs from native's kernel's in the last bit for about one element in
# ten: in float32 the lockstep check would flag that rounding late in training; in float64 it is far below
# the tolerance.
CROSS_ENTROPY_DTYPE = "float64"


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1797 images as (N, 64) pixels scaled to [0, 1], and their labels 0–9 (no download)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return torch.tensor(digits.data / 16.0), torch.tensor(digits.target)


@experiment(
    "digits",
    "scikit-learn's 8×8 digits, 64-32-10 sigmoid MLP, MSE on one-hot targets, held-out accuracy",
    steps=3000, lr=4.0, batch_size=32, dtype="float32",
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
