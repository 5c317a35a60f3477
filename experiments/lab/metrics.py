"""Metrics an experiment evaluates on both models."""

from __future__ import annotations

from collections.abc import Callable

import torch


def accuracy(inputs: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.nn.Module], float]:
    """A metric: the share of ``inputs`` whose predicted class is the label.

    One output unit is a two-class prediction thresholded at 0.5; several are argmax.
    """

    def metric(model: torch.nn.Module) -> float:
        output = model(inputs)
        predicted = (output[:, 0] > 0.5).long() if output.shape[-1] == 1 else output.argmax(-1)
        return (predicted == labels).double().mean().item()

    return metric
