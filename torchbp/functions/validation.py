"""Input checks shared by the hand-derived Functions.

A wrong input must fail loudly before any arithmetic happens: a silently
broadcast target or a float64 weight quietly promoted against a float32 input
would train to a wrong answer with no error anywhere.

The error types subclass both the Python exception a reader expects
(ValueError for a bad value, TypeError for a bad dtype) and RuntimeError,
which is what native torch raises for the same mistakes, so code written
against ``torch.nn.functional`` keeps catching them.
"""

from __future__ import annotations

import torch


class ShapeError(ValueError, RuntimeError):
    """A tensor's shape does not fit the operation."""


class DTypeError(TypeError, RuntimeError):
    """A tensor's dtype is not a floating-point dtype, or differs from its partner's."""


class DeviceError(ValueError, RuntimeError):
    """Tensors that must live on one device live on several."""


class ArgumentError(ValueError, RuntimeError):
    """An argument whose value the operation does not accept (native torch raises RuntimeError)."""


class ClassIndexError(IndexError, RuntimeError):
    """A class index outside [0, C) (native torch raises IndexError on the CPU, RuntimeError on CUDA)."""


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        # The message torch.nn.functional's losses give for the same mistake.
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_floating_and_matching(op: str, **tensors: torch.Tensor | None) -> None:
    """Every given tensor is floating point, and all share one dtype and one device."""
    present = [t for t in tensors.values() if t is not None]
    first = present[0]
    if (  # the common case, decided in a few comparisons; the loop below explains the others
        isinstance(first, torch.Tensor)
        and first.dtype in FLOATING
        and all(isinstance(t, torch.Tensor) and t.dtype == first.dtype and t.device == first.device for t in present[1:])
    ):
        return
    named = [(name, t) for name, t in tensors.items() if t is not None]
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise DTypeError(
                f"{op}: expected {name} to be a floating-point tensor, got dtype {tensor.dtype}"
            )
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.dtype != first.dtype:
            raise DTypeError(
                f"{op}: expected {name} to have the dtype of {first_name} ({first.dtype}), "
                f"got {tensor.dtype}"
            )
        if tensor.device != first.device:
            raise DeviceError(
                f"{op}: expected {name} on the device of {first_name} ({first.device}), "
                f"got {tensor.device}"
            )


def check_linear_shapes(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """input is (*, in_features), weight is (out_features, in_features), bias is (out_features,)."""
    if weight.dim() != 2:
        raise ShapeError(
            f"linear: expected weight of shape (out_features, in_features), got {_shape(weight)}"
        )
    out_features, in_features = weight.shape
    if input.dim() == 0 or input.shape[-1] != in_features:
        raise ShapeError(
            f"linear: expected input of shape (*, {in_features}) to match weight {_shape(weight)}, "
            f"got input {_shape(input)}"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ShapeError(
            f"linear: expected bias of shape ({out_features},) to match weight {_shape(weight)}, "
            f"got bias {_shape(bias)}"
        )


def check_same_shape(op: str, input: torch.Tensor, target: torch.Tensor) -> None:
    """Loss input and target have exactly one shape; no silent broadcasting."""
    if input.shape != target.shape:
        raise ShapeError(
            f"{op}: expected target of the input's shape {_shape(input)}, got {_shape(target)}; "
            "reshape one of them explicitly (torchbp does not broadcast a loss target)"
        )


# Each layer's checks in one call: the common case decided in a few comparisons, the checks above explaining the rest.


def check_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """:func:`check_floating_and_matching` and :func:`check_linear_shapes` for linear's arguments."""
    if (
        isinstance(input, torch.Tensor)
        and isinstance(weight, torch.Tensor)
        and input.dtype in FLOATING
        and weight.dtype == input.dtype
        and weight.device == input.device
        and weight.dim() == 2
        and input.dim() > 0
        and input.shape[-1] == weight.shape[1]
        and (
            bias is None
            or isinstance(bias, torch.Tensor)
            and bias.dtype == input.dtype
            and bias.device == input.device
            and bias.shape == weight.shape[:1]
        )
    ):
        return
    check_floating_and_matching("linear", input=input, weight=weight, bias=bias)
    check_linear_shapes(input, weight, bias)


def check_activation(op: str, input: torch.Tensor) -> None:
    """:func:`check_floating_and_matching` for an elementwise activation's input."""
    if not (isinstance(input, torch.Tensor) and input.dtype in FLOATING):
        check_floating_and_matching(op, input=input)


def check_loss(op: str, input: torch.Tensor, target: torch.Tensor) -> None:
    """:func:`check_floating_and_matching` and :func:`check_same_shape` for a loss's input and target."""
    if (
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and input.dtype in FLOATING
        and target.dtype == input.dtype
        and target.device == input.device
        and target.shape == input.shape
    ):
        return
    check_floating_and_matching(op, input=input, target=target)
    check_same_shape(op, input, target)


def check_scale(c: float) -> None:
    """A constant scale is a Python int or float (a tensor would want a gradient of its own)."""
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise TypeError(f"scale: expected a Python float, got {type(c).__name__}")
