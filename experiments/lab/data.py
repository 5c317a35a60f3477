"""The data several experiments share: scikit-learn's 8×8 digits, and their precision under cross-entropy."""

from __future__ import annotations

import torch

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
