"""The 8×8 digits through a small residual network: convolutions, batch normalisation, a residual add, a
depthwise-separable block, pooling, and cross-entropy with class weights; every layer with parameters hand-derived."""

from __future__ import annotations

import torch

from experiments.lab.data import CROSS_ENTROPY_DTYPE, load_digits
from experiments.lab.metrics import accuracy
from experiments.lab.minibatches import Minibatches, split
from experiments.lab.registry import Config, OptimizerChoice, Setup, experiment


class Residual(torch.nn.Module):
    """ReLU(x + block(x)): a ResNet's basic block around ``block``."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.block(x))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> list[torch.nn.Module]:
    """A convolution without bias (the batch norm after it has one) and its batch normalisation."""
    padding = kernel_size // 2
    return [
        torch.nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=False),
        torch.nn.BatchNorm2d(out_channels),
    ]


def small_resnet(config: Config, width: int = 16) -> torch.nn.Sequential:
    """(N, 1, 8, 8) → conv-BN-ReLU → residual block (conv-BN-ReLU-conv-BN, + x, ReLU) → max pool 2 →
    depthwise-separable block (depthwise 3×3-BN-ReLU, pointwise 1×1 to 2·width-BN-ReLU) → global average pool
    → linear → 10 logits."""
    torch.manual_seed(config.seed)
    return torch.nn.Sequential(
        *conv_bn(1, width, 3),
        torch.nn.ReLU(),
        Residual(torch.nn.Sequential(*conv_bn(width, width, 3), torch.nn.ReLU(), *conv_bn(width, width, 3))),
        torch.nn.MaxPool2d(2),  # 8×8 → 4×4
        *conv_bn(width, width, 3, groups=width),  # depthwise: one kernel per channel
        torch.nn.ReLU(),
        *conv_bn(width, 2 * width, 1),  # pointwise: mixes the channels
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * width, 10),
    ).to(dtype=config.torch_dtype, device=config.device)


def class_weights(labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """w_c = N / (C · N_c): each class weighs as if the classes were equally frequent (the mean of w over the
    samples is 1)."""
    counts = torch.bincount(labels, minlength=classes).to(torch.float64)
    return labels.numel() / (classes * counts)


@experiment(
    "digits-resnet",
    "scikit-learn's 8×8 digits, a small ResNet (batch norm, residual add, depthwise-separable block, pooling), "
    "class-weighted cross-entropy, held-out accuracy",
    optimizer=OptimizerChoice(torch.optim.SGD, momentum=0.9),
    steps=300,
    lr=0.05,
    batch_size=64,
    dtype=CROSS_ENTROPY_DTYPE,
)
def build(config: Config) -> Setup:
    pixels, labels = load_digits()
    images = pixels.reshape(-1, 1, 8, 8).to(dtype=config.torch_dtype, device=config.device)
    x_train, label_train, x_test, label_test = split(images, labels.to(config.device), 0.2, config.seed)
    weight = class_weights(label_train).to(dtype=config.torch_dtype, device=config.device)
    return Setup(
        model=small_resnet(config),
        loss_fn=torch.nn.CrossEntropyLoss(weight=weight),
        batches=Minibatches(x_train, label_train, config.batch_size, config.seed),
        metrics={"held_out_accuracy": accuracy(x_test, label_test)},  # in eval mode: the running statistics
        headline_metric="held_out_accuracy",
        metric_every=100,
        # Batch normalisation in training mode couples the samples: no sample has a gradient of its own.
        per_sample_every=None,
    )
