"""Functional forms of the hand-derived layers, with torch.nn.functional's signatures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import _reduction

from torchbp.autocast import FLOAT32, LOWER_PRECISION, cast_as_autocast_would
from torchbp.functions import (
    Conv2dFunction,
    CrossEntropyFunction,
    LayerNormFunction,
    LinearFunction,
    MSELossFunction,
    ReLUFunction,
    SigmoidFunction,
    TanhFunction,
)
from torchbp.functions.conv2d import numeric_padding
from torchbp.functions.shortcuts import any_autocast_enabled


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = input weightᵀ + bias, as torch.nn.functional.linear, backward by LinearFunction.

    Under ``torch.autocast`` it runs in the autocast dtype, as the native one does.
    """
    if any_autocast_enabled() and isinstance(input, torch.Tensor):  # one cheap call when autocast is off
        input, weight, bias = cast_as_autocast_would(LOWER_PRECISION, input, weight, bias)
    return LinearFunction.apply(input, weight, bias)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """σ(input), as torch.sigmoid, backward by SigmoidFunction."""
    return SigmoidFunction.apply(input)


def tanh(input: torch.Tensor) -> torch.Tensor:
    """tanh(input), as torch.tanh, backward by TanhFunction."""
    return TanhFunction.apply(input)


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), as torch.nn.functional.relu, backward by ReLUFunction.

    With ``inplace=True`` the result is written back into ``input`` (a copy recorded by autograd, so
    the gradient still flows through ReLUFunction), and ``input`` is returned, as natively.
    """
    output = ReLUFunction.apply(input)
    return input.copy_(output) if inplace else output


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
    refused with a ShapeError (a ValueError) instead of being broadcast. Under
    ``torch.autocast`` it runs in float32, as the native one does.
    """
    if weight is not None:
        raise NotImplementedError("torchbp.functional.mse_loss has no hand-derived backward for weight=")
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if any_autocast_enabled() and isinstance(input, torch.Tensor):
        input, target = cast_as_autocast_would(FLOAT32, input, target)
    return MSELossFunction.apply(input, target, reduction)


def layer_norm(
    input: torch.Tensor,
    normalized_shape: list[int] | tuple[int, ...] | torch.Size,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalisation over the last dimensions, as torch.nn.functional.layer_norm, backward by
    LayerNormFunction. It runs in its input's dtype, as the native one does under ``torch.autocast`` on the
    CPU; a float16 or bfloat16 input with float32 parameters is normalised in float32, as natively."""
    if isinstance(input, torch.Tensor) and input.dtype in LOWER_PRECISION_DTYPES and any(
        isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in (weight, bias)
    ):
        # A float16 or bfloat16 input with float32 parameters (a Linear's output under autocast): native's
        # mixed kernel computes in float32 and returns the input's dtype; so does this.
        return LayerNormFunction.apply(input.float(), tuple(normalized_shape), weight, bias, eps).to(input.dtype)
    return LayerNormFunction.apply(input, tuple(normalized_shape), weight, bias, eps)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of logits, as torch.nn.functional.cross_entropy, backward by CrossEntropyFunction.

    Class-index and class-probability targets, ``ignore_index`` and ``label_smoothing`` as native;
    class weights (``weight=``) are refused. Under ``torch.autocast`` it runs in float32, as the native one does.
    """
    if weight is not None:
        raise NotImplementedError("torchbp.functional.cross_entropy has no hand-derived backward for weight=")
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if any_autocast_enabled() and isinstance(input, torch.Tensor):
        (input,) = cast_as_autocast_would(FLOAT32, input)
        if target.is_floating_point():
            (target,) = cast_as_autocast_would(FLOAT32, target)
    return CrossEntropyFunction.apply(input, target, reduction, ignore_index, label_smoothing)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-d convolution, as torch.nn.functional.conv2d, backward by Conv2dFunction.

    ``padding`` may be "valid", "same" (an odd total is padded one more at the bottom and right, as
    native) or ints. ``groups`` other than 1 are refused. Under ``torch.autocast`` it runs in the
    autocast dtype, as the native one does.
    """
    if groups != 1:
        raise NotImplementedError(f"torchbp.functional.conv2d: groups=1 only, got groups={groups}")
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(weight, torch.Tensor) and weight.dim() == 4:
        padding, extra = numeric_padding(padding, tuple(weight.shape[-2:]), dilation, stride)
        if extra is not None:
            input = F.pad(input, extra)  # the odd one of "same", at the bottom and right
    else:
        padding = _pair(padding)  # Conv2dFunction names a weight of the wrong shape
    if any_autocast_enabled() and isinstance(input, torch.Tensor):
        input, weight, bias = cast_as_autocast_would(LOWER_PRECISION, input, weight, bias)
    return Conv2dFunction.apply(input, weight, bias, stride, padding, dilation)


LOWER_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)
