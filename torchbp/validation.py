"""The error types, and the argument checks several layers share (each layer's own live in its file).

A wrong input must fail loudly before any arithmetic happens: a silently
broadcast target or a float64 weight quietly promoted against a float32 input
would train to a wrong answer with no error anywhere.

The error types subclass both the Python exception a reader expects
(ValueError for a bad value, TypeError for a bad dtype) and RuntimeError,
which is what native torch raises for the same mistakes, so code written
against ``torch.nn.functional`` keeps catching them.

Every check is named ``validate_*`` (``check_*`` in torchbp compares with
autograd) and decides the common case in a few comparisons before explaining
anything else.
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


class IndexRangeError(IndexError, RuntimeError):
    """An index outside the range of what it indexes: an embedding's row (native torch raises IndexError on
    the CPU, RuntimeError on CUDA)."""


class ClassIndexError(IndexRangeError):
    """A class index outside [0, C) (native torch raises IndexError on the CPU, RuntimeError on CUDA)."""


REDUCTIONS = ("mean", "sum", "none")
FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def shape_text(tensor: torch.Tensor) -> str:
    """A shape as an error message prints it: ``(5, 2)``."""
    return str(tuple(tensor.shape))


def validate_bias_shape(op: str, bias: torch.Tensor | None, weight: torch.Tensor) -> None:
    """A layer's bias, where given, is (out,), out the weight's first size."""
    out = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (out,):
        raise ShapeError(
            f"{op}: expected bias of shape ({out},) to match weight {shape_text(weight)}, got bias {shape_text(bias)}"
        )


def validate_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        # The message torch.nn.functional's losses give for the same mistake.
        raise ValueError(f"{reduction} is not a valid value for reduction")


def validate_floating_and_matching(op: str, **tensors: torch.Tensor | None) -> None:
    """Every given tensor is floating point, and all share one dtype and one device."""
    present = [t for t in tensors.values() if t is not None]
    first = present[0]
    if (  # the common case, decided in a few comparisons; the loop below explains the others
        isinstance(first, torch.Tensor)
        and first.dtype in FLOATING
        and all(
            isinstance(t, torch.Tensor) and t.dtype == first.dtype and t.device == first.device for t in present[1:]
        )
    ):
        return
    named = [(name, t) for name, t in tensors.items() if t is not None]
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise DTypeError(f"{op}: expected {name} to be a floating-point tensor, got dtype {tensor.dtype}")
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.dtype != first.dtype:
            raise DTypeError(
                f"{op}: expected {name} to have the dtype of {first_name} ({first.dtype}), got {tensor.dtype}"
            )
        if tensor.device != first.device:
            raise DeviceError(
                f"{op}: expected {name} on the device of {first_name} ({first.device}), got {tensor.device}"
            )


def validate_floating(op: str, input: torch.Tensor) -> None:
    """One floating-point tensor: an elementwise activation's input."""
    if not (isinstance(input, torch.Tensor) and input.dtype in FLOATING):
        validate_floating_and_matching(op, input=input)


def validate_same_shape(op: str, input: torch.Tensor, target: torch.Tensor) -> None:
    """Loss input and target have exactly one shape; no silent broadcasting."""
    if input.shape != target.shape:
        raise ShapeError(
            f"{op}: expected target of the input's shape {shape_text(input)}, got {shape_text(target)}; "
            "reshape one of them explicitly (torchbp does not broadcast a loss target)"
        )


def validate_loss(op: str, input: torch.Tensor, target: torch.Tensor) -> None:
    """Floating point, one dtype and device, and one shape for a loss's input and target."""
    if (
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and input.dtype in FLOATING
        and target.dtype == input.dtype
        and target.device == input.device
        and target.shape == input.shape
    ):
        return
    validate_floating_and_matching(op, input=input, target=target)
    validate_same_shape(op, input, target)


def validate_scale(c: float) -> None:
    """A constant scale is a Python int or float (a tensor would want a gradient of its own)."""
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise TypeError(f"scale: expected a Python float, got {type(c).__name__}")
