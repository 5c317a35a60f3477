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

from typing import Any

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
LOWER_PRECISION_DTYPES = (torch.float16, torch.bfloat16)  # a normalisation beside float32 parameters runs in float32


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


# -- pooling windows: the checks MaxPool2d and AvgPool2d share ---------------------------------------------


def pool2d_pairs(kernel_size: Any, stride: Any, padding: Any, dilation: Any) -> tuple[Any, Any, Any, Any]:
    """kernel_size, stride, padding and dilation as ``torch.nn.functional``'s pooling reads them: an int
    or a sequence of one is that number for rows and columns, a stride of None or () is the kernel. What
    is neither an int nor a sequence of one or two comes back as it is, for the checks to name."""

    def pair(value: Any) -> Any:
        if is_int(value):
            return (value, value)
        if isinstance(value, (tuple, list)):
            return (value[0], value[-1]) if len(value) in (1, 2) else tuple(value)
        return value

    kernel = pair(kernel_size)
    steps = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else pair(stride)
    return kernel, steps, pair(padding), pair(dilation)


def is_int(value: object) -> bool:
    """An int, or the symbolic int torch.compile may trace one as; not a bool."""
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def _is_pair(value: Any, least: int) -> bool:
    return (
        isinstance(value, tuple) and len(value) == 2 and is_int(value[0]) and is_int(value[1]) and min(value) >= least
    )


def pooled_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """The output size along one dimension, as native pooling computes it: windows of span d·(k − 1) + 1
    every s positions of the input padded by p on either side; with ``ceil_mode`` a last, partial window
    too, provided it starts inside the input or its left padding."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


def validate_pool2d_options(op: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any) -> None:
    """kernel_size, stride and dilation pairs of ints ≥ 1, padding a pair of ints ≥ 0 and at most half the
    kernel (as pool2d_pairs gives them): what a pooling module can check at construction."""
    for name, value, least in (
        ("kernel_size", kernel_size, 1),
        ("stride", stride, 1),
        ("padding", padding, 0),
        ("dilation", dilation, 1),
    ):
        if not (isinstance(value, tuple) and all(is_int(v) for v in value)):
            raise TypeError(f"{op}: expected {name} as an int or a pair of ints, got {value!r}")
        if len(value) != 2:  # native raises RuntimeError here, TypeError above
            raise ArgumentError(f"{op}: expected {name} as an int or a pair of ints, got {value!r}")
        if min(value) < least:
            raise ArgumentError(f"{op}: expected {name} of ints ≥ {least}, got {value}")
    half = (kernel_size[0] // 2, kernel_size[1] // 2)
    if not (padding[0] <= half[0] and padding[1] <= half[1]):
        raise ArgumentError(
            f"{op}: expected padding between 0 and half the kernel_size {kernel_size}, {half}, got {padding}"
        )


def validate_pool2d(
    op: str, input: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
) -> None:
    """A floating-point input (N, C, H, W) or (C, H, W) with C, H, W ≥ 1, the options of
    :func:`validate_pool2d_options`, and room for at least one window in each dimension."""
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        isinstance(input, torch.Tensor)
        and input.dtype in FLOATING
        and input.dim() in (3, 4)
        and min(input.shape[-3:]) > 0
        and _is_pair(kernel_size, 1)
        and _is_pair(stride, 1)
        and _is_pair(dilation, 1)
        and _is_pair(padding, 0)
        and padding[0] <= kernel_size[0] // 2
        and padding[1] <= kernel_size[1] // 2
        and pooled_size(input.shape[-2], kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode) > 0
        and pooled_size(input.shape[-1], kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode) > 0
    ):
        return
    validate_floating(op, input)
    validate_pool2d_options(op, kernel_size, stride, padding, dilation)
    if input.dim() not in (3, 4) or min(input.shape[-3:]) == 0:
        raise ShapeError(
            f"{op}: expected input of shape (N, C, H, W) or (C, H, W) with C, H and W at least 1, got "
            f"{shape_text(input)}"
        )
    sizes = tuple(
        pooled_size(input.shape[i - 2], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode) for i in (0, 1)
    )
    raise ShapeError(
        f"{op}: expected room for at least one window, got input {shape_text(input)} with kernel_size "
        f"{kernel_size}, stride {stride}, padding {padding}, dilation {dilation} and ceil_mode={ceil_mode}, "
        f"which give an output of {sizes[0]} × {sizes[1]}"
    )
