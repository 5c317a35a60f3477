"""Functional forms of the hand-derived layers, with torch.nn.functional's signatures."""

from __future__ import annotations

import torch
from torch.nn import _reduction

from torchbp.functions import LinearFunction, MSELossFunction, SigmoidFunction


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = input weightᵀ + bias, as torch.nn.functional.linear, backward by LinearFunction."""
    return LinearFunction.apply(input, weight, bias)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """σ(input), as torch.sigmoid, backward by SigmoidFunction."""
    return SigmoidFunction.apply(input)


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared error, as torch.nn.functional.mse_loss, backward by MSELossFunction.

    Unlike the native loss, a target whose shape differs from the input's is
    refused with a ShapeError (a ValueError) instead of being broadcast.
    """
    if weight is not None:
        raise NotImplementedError("torchbp.functional.mse_loss has no hand-derived backward for weight=")
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return MSELossFunction.apply(input, target, reduction)
