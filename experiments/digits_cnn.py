"""The 8×8 digits again, as images: a small convolutional network with cross-entropy, every layer hand-derived."""

from __future__ import annotations

import torch

from experiments.lab.data import CROSS_ENTROPY_DTYPE, load_digits
from experiments.lab.metrics import accuracy
from experiments.lab.minibatches import Minibatches, split
from experiments.lab.registry import Config, OptimizerChoice, Setup, experiment


def small_cnn(config: Config) -> torch.nn.Sequential:
    """(N, 1, 8, 8) → conv 3×3, 16 → ReLU → conv 3×3 stride 2, 32 → ReLU → (N, 512) → linear → 10 logits."""
    torch.manual_seed(config.seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 10),
    ).to(dtype=config.torch_dtype, device=config.device)


@experiment(
    "digits-cnn",
    "scikit-learn's 8×8 digits as images, conv-ReLU-conv-ReLU-linear, cross-entropy, held-out accuracy",
    optimizer=OptimizerChoice(torch.optim.Adam),
    steps=600,
    lr=3e-3,
    batch_size=64,
    dtype=CROSS_ENTROPY_DTYPE,
)
def build(config: Config) -> Setup:
    pixels, labels = load_digits()
    images = pixels.reshape(-1, 1, 8, 8).to(dtype=config.torch_dtype, device=config.device)
    x_train, label_train, x_test, label_test = split(images, labels.to(config.device), 0.2, config.seed)
    return Setup(
        model=small_cnn(config),
        loss_fn=torch.nn.CrossEntropyLoss(),
        batches=Minibatches(x_train, label_train, config.batch_size, config.seed),
        metrics={"held_out_accuracy": accuracy(x_test, label_test)},
        headline_metric="held_out_accuracy",
        metric_every=100,
        per_sample_every=50,
    )
