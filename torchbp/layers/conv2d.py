r"""The 2-d convolution z = W ⋆ a_prev + b: its Function, checks, functional form, module and per-sample rule.

Index letters: n runs over samples, c over input channels, o over output
channels, h and w over output rows and columns, i and j over kernel rows and
columns. s and r are the stride and the dilation, one of each per spatial dimension
(written once below, for rows and columns alike), and a_pad is a_prev with
``padding`` zeros added on either side. δ = ∂J/∂z, shape (n, o, h, w).

    z[n,o,h,w] = b[o] + Σ_{c,i,j} W[o,c,i,j] a_pad[n, c, h·s + i·r, w·s + j·r]

With G groups the channels split into G equal runs, and output channel o of
group k reads only the input channels of group k: c runs over those C/G, and W
is (O, C/G, kH, kW). Every sum over c below runs within the group; depthwise
convolution is G = C. The formulas are those of G convolutions side by side.

Input element a_pad[n,c,u,v] is read by every output and kernel position with
h·s + i·r = u and w·s + j·r = v, so the chain rule gives:

    ∂J/∂a_pad[n,c,u,v] = Σ_{o,i,j} Σ_{h·s+i·r=u, w·s+j·r=v} δ[n,o,h,w] W[o,c,i,j]
    ∂J/∂W[o,c,i,j]     = Σ_n Σ_{h,w} δ[n,o,h,w] a_pad[n, c, h·s + i·r, w·s + j·r]
    ∂J/∂b[o]           = Σ_{n,h,w} δ[n,o,h,w]

The first is the transposed convolution of δ with W (δ spread out by s, then
convolved with the kernel, the padding cropped off); the second the correlation
of δ with the input, δ ⋆ a_prev. An unbatched input (c, H, W), which is also what every
per-sample call under torch.func.vmap sees, is a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from torchbp import autocast
from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.table import Layer, register
from torchbp.validation import (
    FLOATING,
    ShapeError,
    shape_text,
    validate_bias_shape,
    validate_floating_and_matching,
)

Pair = tuple[int, int]


# -- input checks ----------------------------------------------------------------------


def _is_pair(value: Any, least: int) -> bool:
    """A tuple (or list) of two ints ≥ least, in a few comparisons."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and type(value[0]) is int
        and type(value[1]) is int
        and value[0] >= least
        and value[1] >= least
    )


def _is_int(value: object) -> bool:
    """An int, or the symbolic int torch.compile may trace one as; not a bool."""
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def _reaches(size: int, k: int, p: int, d: int) -> bool:
    """Does the padded input hold at least one window of the dilated kernel?"""
    return size + 2 * p >= d * (k - 1) + 1


def validate_conv2d_arguments(stride: Any, padding: Any, dilation: Any) -> None:
    """stride and dilation are pairs of ints ≥ 1, padding a pair of ints ≥ 0."""
    for name, value, least in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value)):
            hint = " (convert 'same' and 'valid' with numeric_padding first)" if isinstance(value, str) else ""
            raise TypeError(f"conv2d: expected {name} as a tuple of two ints, got {value!r}{hint}")
        if not (value[0] >= least and value[1] >= least):
            raise ValueError(f"conv2d: expected {name} of ints ≥ {least}, got {tuple(value)}")


def validate_conv2d_groups(groups: Any) -> None:
    if not _is_int(groups):
        raise TypeError(f"conv2d: expected groups to be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"conv2d: expected groups ≥ 1, got {groups}")


def validate_conv2d_shapes(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> None:
    """input (n, c, H, W) or (c, H, W), weight (o, c/G, kH, kW) with o, c ≥ 1 and G dividing both, bias (o,), and
    a window that fits."""
    if weight.dim() != 4 or weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ShapeError(
            "conv2d: expected weight of shape (out_channels, in_channels / groups, kH, kW) with at least one "
            f"channel of each, got {shape_text(weight)}"
        )
    if weight.shape[0] % groups:
        raise ShapeError(
            f"conv2d: expected groups={groups} to divide the weight's {weight.shape[0]} output channels, "
            f"got weight {shape_text(weight)}"
        )
    in_channels, kH, kW = weight.shape[1] * groups, weight.shape[2], weight.shape[3]
    if input.dim() not in (3, 4) or input.shape[-3] != in_channels:
        per_group = f" ({groups} groups of {weight.shape[1]})" if groups > 1 else ""
        raise ShapeError(
            f"conv2d: expected input of shape (N, {in_channels}, H, W) or ({in_channels}, H, W){per_group} to "
            f"match weight {shape_text(weight)}, got input {shape_text(input)}"
        )
    validate_bias_shape("conv2d", bias, weight)
    H, W = input.shape[-2:]
    if not (_reaches(H, kH, padding[0], dilation[0]) and _reaches(W, kW, padding[1], dilation[1])):
        reach = tuple(d * (k - 1) + 1 for k, d in zip((kH, kW), dilation))
        raise ShapeError(
            f"conv2d: expected input at least as large as the dilated kernel {reach} once padded, got input "
            f"{shape_text(input)} with padding {tuple(padding)} for weight {shape_text(weight)} "
            f"with dilation {tuple(dilation)}"
        )


def validate_conv2d(
    input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any = 1
) -> None:
    """Floating point, one dtype and device, shapes that fit, and numeric stride, padding, dilation and groups."""
    if (  # the common case, decided in a few comparisons; the checks above explain the rest
        isinstance(input, torch.Tensor)
        and isinstance(weight, torch.Tensor)
        and input.dtype in FLOATING
        and weight.dtype == input.dtype
        and weight.device == input.device
        and weight.dim() == 4
        and input.dim() in (3, 4)
        and type(groups) is int
        and groups >= 1
        and input.shape[-3] == weight.shape[1] * groups
        and weight.shape[0] % groups == 0
        and weight.shape[0] > 0
        and weight.shape[1] > 0
        and (
            bias is None
            or (
                isinstance(bias, torch.Tensor)
                and bias.dtype == input.dtype
                and bias.device == input.device
                and bias.shape == weight.shape[:1]
            )
        )
        and _is_pair(stride, 1)
        and _is_pair(padding, 0)
        and _is_pair(dilation, 1)
        and _reaches(input.shape[-2], weight.shape[2], padding[0], dilation[0])
        and _reaches(input.shape[-1], weight.shape[3], padding[1], dilation[1])
    ):
        return
    validate_floating_and_matching("conv2d", input=input, weight=weight, bias=bias)
    validate_conv2d_arguments(stride, padding, dilation)
    validate_conv2d_groups(groups)
    validate_conv2d_shapes(input, weight, bias, padding, dilation, groups)


def numeric_padding(
    padding: str | int | Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int] = (1, 1),
) -> tuple[tuple[int, ...], tuple[int, int, int, int] | None]:
    """``padding`` in the form Conv2dFunction takes: (pair, extra), extra being None or the
    ``F.pad`` pads (left, right, top, bottom) to apply to the input first.

    "valid" is (0, 0). "same" pads r·(k − 1) along each dimension, half on either side;
    where that is odd, native torch puts the one left over at the bottom or right: the
    pair holds the even part, extra the rest (zeros). A wrapper with a ``padding_mode``
    other than "zeros" pads (p_w, p_w + extra_w, p_h, p_h + extra_h) in that mode itself
    and passes (0, 0). An int p is (p, p); a pair of ints comes back as it is.
    ValueError for any other string, and for "same" with a stride above 1, as native
    torch refuses both.
    """
    if isinstance(padding, int):
        return (padding, padding), None
    if not isinstance(padding, str):
        return tuple(padding), None
    if padding == "valid":
        return (0, 0), None
    if padding != "same":
        raise ValueError(f"Invalid padding string: {padding!r}")
    if any(s != 1 for s in stride):
        raise ValueError("padding='same' is not supported for strided convolutions")
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]  # rows, columns
    even = (total[0] // 2, total[1] // 2)
    extra_h, extra_w = total[0] - 2 * even[0], total[1] - 2 * even[1]
    return even, ((0, extra_w, 0, extra_h) if extra_h or extra_w else None)


# -- the backward ----------------------------------------------------------------------


def input_gradient(
    delta: torch.Tensor,
    W: torch.Tensor,
    input_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int = 1,
) -> torch.Tensor:
    """∂J/∂a_prev, the transposed convolution of δ with W less the padding: (n, o, h, w) -> (n, c, H, W); with
    groups, each group's δ with its own kernels."""
    # The last rows and columns that no window reaches (fewer than s of them) get a zero
    # gradient; conv_transpose2d leaves them out unless output_padding adds them back.
    output_padding = tuple(
        (size + 2 * p - d * (k - 1) - 1) % s
        for size, k, s, p, d in zip(input_size, W.shape[2:], stride, padding, dilation)
    )
    return F.conv_transpose2d(delta, W, None, stride, padding, output_padding, groups, dilation)


COMPILED_CONTRACTION_LIMIT = 32_768  # a sample's window elements up to which compiled ∂J/∂W is one contraction


def weight_gradient(
    a_prev: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int = 1,
) -> torch.Tensor:
    """∂J/∂W = Σ_n Σ_{h,w} δ[n,o,h,w] a_pad[n, c, h·s + i·r, w·s + j·r]: (o, c/G, kH, kW), c within o's group.

    Eagerly, read with n as the channel summed over and δ as the kernel, this is a
    convolution whose stride is r and whose dilation is s. Its output (c, o, i', j')
    runs past kH × kW where rows or columns are left that no window reaches; the first
    kH × kW are the gradient. Chosen over unfold and a matrix product per sample
    (per_sample_weight_grads, summed) as faster and lighter in float32: for N=64, C=16,
    O=32, 28×28, k=3, padding 1, on 2 CPU cores, 10.5 ms and 18 MiB at peak against
    17.8 ms and 29 MiB (native autograd's weight gradient, oneDNN's own kernel: 3.8 ms,
    9 MiB). In float64 the unfold is the faster, 50 ms against 63 ms (native: 39 ms).

    While torch.compile traces, that convolution would make the batch size its channel
    count, which the compiler must fix, so a symbolic batch size (dynamic=True, or the
    recompilation after a smaller last batch) would fail. There, where a sample's windows
    are many (more than ``COMPILED_CONTRACTION_LIMIT`` elements, c × h × w × kH × kW), it
    runs as the custom operator ``torchbp::conv2d_weight_gradient``
    (:func:`weight_gradient_op`), which the compiler calls as it is, with the sizes of
    each call; elsewhere, and where the backward is itself differentiated, as one
    contraction over the windows (:func:`weight_gradient_by_offsets`), which the
    compiler fuses and whose operations carry their derivatives. Compiled, against
    native compiled: on digits-cnn's network (at most 9 216 elements) the contraction
    measured 1.00 and the operator 1.11; on the benchmark's compute-bound convolution
    (147 456 and 294 912) the contraction 5.09 and the operator 1.28 and 1.54 in two full runs of
    ``python -m experiments.bench`` (1.9 run alone with ``--only compiled``).
    """
    if torch.compiler.is_compiling():
        windows = a_prev.shape[1] * delta.shape[2] * delta.shape[3] * kernel_size[0] * kernel_size[1]
        if torch.is_grad_enabled() or windows <= COMPILED_CONTRACTION_LIMIT:
            return weight_gradient_by_offsets(a_prev, delta, kernel_size, stride, padding, dilation, groups)
        return weight_gradient_op(a_prev, delta, [*kernel_size], [*stride], [*padding], [*dilation], groups)  # type: ignore[no-any-return]  # torch.library leaves the operator untyped
    return weight_gradient_by_convolution(a_prev, delta, kernel_size, stride, padding, dilation, groups)


def by_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """t's channels (dimension 1) split into (groups, channels per group): a view, no copy."""
    return t.reshape(t.shape[0], groups, t.shape[1] // groups, *t.shape[2:])


def weight_gradient_by_convolution(
    a_prev: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int = 1,
) -> torch.Tensor:
    """∂J/∂W = δ ⋆ a_prev, as ``F.conv2d`` with δ for the kernel and n the channel summed over (see
    :func:`weight_gradient`).

    With G groups, the pairs (k, n) are the channels, G groups of N: a_prev (n, c, H, W) read as the batch of
    C/G inputs (c', (k, n), H, W), δ as the G·(O/G) kernels ((k, o'), n, h, w), and the convolution in G groups
    pairs each group's channels with its own outputs only; G = 1 is the plain transpose.
    """
    n, c = a_prev.shape[:2]
    o = delta.shape[1]
    if n == 0:  # no samples: F.conv2d with no input channels gives a tensor of the wrong shape
        return a_prev.new_zeros((o, c // groups, *kernel_size))
    a_by_group = by_group(a_prev, groups).permute(2, 1, 0, 3, 4).flatten(1, 2)  # (c', G·n, H, W)
    delta_by_group = by_group(delta, groups).permute(1, 2, 0, 3, 4).flatten(0, 1)  # (G·o', n, h, w)
    grad = F.conv2d(a_by_group, delta_by_group, None, dilation, padding, stride, groups)  # (c', o, i', j')
    return grad[:, :, : kernel_size[0], : kernel_size[1]].transpose(0, 1)  # (o, c/G, kH, kW)


@torch.library.custom_op("torchbp::conv2d_weight_gradient", mutates_args=())
def weight_gradient_op(
    a_prev: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """:func:`weight_gradient_by_convolution` as an operator the compiler does not trace into: (o, c/G, kH, kW),
    contiguous as its fake (the compiler plans with the fake's strides)."""
    pairs = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    return weight_gradient_by_convolution(a_prev, delta, *pairs, groups).contiguous()  # type: ignore[arg-type]


@weight_gradient_op.register_fake
def _(
    a_prev: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    # (o, c/G, kH, kW): stride, padding and dilation do not change the gradient's shape
    return a_prev.new_empty((delta.shape[1], a_prev.shape[1] // groups, *kernel_size))


def weight_gradient_by_offsets(
    a_prev: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int = 1,
) -> torch.Tensor:
    """The same ∂J/∂W as one contraction over the windows: ∂J/∂W[o, c, i, j] = Σ_{n,h,w} δ[n,o,h,w]
    windows[n, c, h, w, i, j], where windows[n, c, h, w, i, j] = a_pad[n, c, h·s + i·r, w·s + j·r]
    (a strided view of a_pad, no copy); with groups, k an index of both, each group's channels with its
    own outputs."""
    a_windows = windows(a_prev, kernel_size, stride, padding, dilation)[:, :, : delta.shape[2], : delta.shape[3]]
    a_windows = by_group(a_windows, groups)  # (n, G, c', h, w, kH, kW)
    delta_by_group = by_group(delta, groups)  # (n, G, o', h, w)
    return torch.einsum("ngohw,ngchwij->gocij", delta_by_group, a_windows).flatten(0, 1)  # (o, c/G, kH, kW)


def windows(
    a_prev: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """windows[n, c, h, w, i, j] = a_pad[n, c, h·s + i·r, w·s + j·r], the window each output position reads:
    a strided view of a_pad, no copy."""
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = kernel_size, stride, padding, dilation
    a_pad = F.pad(a_prev, (pW, pW, pH, pH))
    return a_pad.unfold(2, (kH - 1) * dH + 1, sH).unfold(3, (kW - 1) * dW + 1, sW)[..., ::dH, ::dW]


def conv2d_backward(
    delta: torch.Tensor,
    a_prev: torch.Tensor | None,
    W: torch.Tensor | None,
    input_size: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    need_a_prev: bool,
    need_W: bool,
    need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Given δ = ∂J/∂z, the gradients (∂J/∂a_prev, ∂J/∂W, ∂J/∂b), each only when needed."""
    unbatched = delta.dim() == 3  # (o, h, w): a batch of one
    if unbatched:
        delta = delta.unsqueeze(0)
        a_prev = None if a_prev is None else a_prev.unsqueeze(0)
    grad_a_prev = grad_W = grad_b = None
    if need_a_prev:
        assert W is not None  # saved whenever ∂J/∂a_prev is needed
        grad_a_prev = input_gradient(delta, W, input_size, stride, padding, dilation, groups)  # (n, c, H, W)
        grad_a_prev = grad_a_prev.squeeze(0) if unbatched else grad_a_prev
    if need_W:
        assert a_prev is not None  # saved whenever ∂J/∂W is needed
        grad_W = weight_gradient(a_prev, delta, kernel_size, stride, padding, dilation, groups)  # (o, c/G, kH, kW)
    if need_b:
        grad_b = delta.sum((0, 2, 3))  # Σ_{n,h,w} δ: (o,)
    return grad_a_prev, grad_W, grad_b


class Conv2dFunction(HandDerivedFunction):
    r"""z = W ⋆ a_prev + b (``F.conv2d``), with the backward derived by hand.

    Given δ = ∂J/∂z:

    - ∂J/∂a_prev = the transposed convolution of δ with W
      (``F.conv_transpose2d(δ, W, s, padding, output_padding, r)``, output_padding making it a_prev's size)
    - ∂J/∂W[o,c,i,j] = Σ_n Σ_{h,w} δ[n,o,h,w] a_pad[n, c, h·s + i·r, w·s + j·r]
    - ∂J/∂b[o] = Σ_{n,h,w} δ[n,o,h,w]

    ``apply(input, weight, bias, stride, padding, dilation, groups)``: input (n, c, H, W)
    or (c, H, W), weight (o, c/groups, kH, kW), bias (o,) or None, stride, padding and
    dilation tuples of two ints (see :func:`numeric_padding` for "same" and "valid"), and
    groups an int dividing c and o (each group's sums run over its own channels).
    Saved: a_prev when ∂J/∂W is asked for, W when ∂J/∂a_prev is.

    On CPU, ∂J/∂a_prev is bit-identical to native in float32 and float64
    (conv_transpose2d runs native's backward-data kernel), and so is ∂J/∂b in
    float64 without dilation or groups. Native's backward-weights kernels add ∂J/∂W in an
    order of their own that no forward op reproduces (oneDNN in float32, a matrix
    product per sample in float64), and with it ∂J/∂b in float32 (oneDNN) and
    with dilation (sample by sample): those agree within torchbp.compare's default
    tolerance.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Pair,
        padding: Pair,
        dilation: Pair,
        groups: int,
    ) -> torch.Tensor:
        validate_conv2d(input, weight, bias, stride, padding, dilation, groups)
        z = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        # An unbatched input's output is a view of a batch of one; a custom Function's output that is a
        # view refuses in-place writes, native conv2d's does not. The same values, as a tensor that is not:
        return z if z._base is None else torch.ops.aten._unsafe_view(z, z.shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        a_prev, W, _, stride, padding, dilation, groups = inputs
        need_a_prev, need_W = ctx.needs_input_grad[:2]
        # The transposed convolution reads W, the correlation a_prev: keep only what will be read.
        ctx.save_for_backward(a_prev if need_W else None, W if need_a_prev else None)
        ctx.input_size, ctx.kernel_size = tuple(a_prev.shape[-2:]), tuple(W.shape[-2:])
        ctx.stride, ctx.padding, ctx.dilation, ctx.groups = stride, padding, dilation, groups

    @staticmethod
    def backward(ctx: Any, delta: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a_prev, W = ctx.saved_tensors
        grads = conv2d_backward(
            delta,
            a_prev,
            W,
            ctx.input_size,
            ctx.kernel_size,
            ctx.stride,
            ctx.padding,
            ctx.dilation,
            ctx.groups,
            *ctx.needs_input_grad[:3],
        )
        return (*grads, None, None, None, None)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-d convolution, as torch.nn.functional.conv2d, backward by Conv2dFunction.

    ``padding`` may be "valid", "same" (an odd total is padded one more at the bottom and right, as
    native) or ints; ``groups`` splits the channels into that many independent convolutions (depthwise:
    groups = in_channels). Under ``torch.autocast`` it runs in the autocast dtype, as the native one does.
    """
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(weight, torch.Tensor) and weight.dim() == 4:
        padding, extra = numeric_padding(padding, tuple(weight.shape[-2:]), dilation, stride)
        if extra is not None:
            input = F.pad(input, extra)  # the odd one of "same", at the bottom and right
    else:
        padding = _pair(padding)  # Conv2dFunction names a weight of the wrong shape
    if autocast.any_enabled() and isinstance(input, torch.Tensor):
        input, weight, bias = autocast.cast_as_autocast_would(autocast.LOWER_PRECISION, input, weight, bias)
    return Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)  # type: ignore[no-any-return]


def _pair(value: Any) -> tuple[Any, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Conv2d(HandDerivedModule, torch.nn.Conv2d):
    r"""torch.nn.Conv2d whose backward is :class:`Conv2dFunction`.

    .. math:: z = W \star a_{prev} + b

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device,
            dtype: as torch.nn.Conv2d (groups: grouped and depthwise convolution).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)` or :math:`(C_{in}, H, W)`; Output: :math:`(N, C_{out}, H_{out}, W_{out})`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as native: pad in the mode, then convolve with no padding
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


# -- the per-sample view ---------------------------------------------------------------
# ∂J/∂W = Σ_n δ_n U_nᵀ, with U_n = unfold(a_prev,n): (c·kH·kW, L), one column per output
# position l = (h, w), holding the window a_pad[n, c, h·s + i·r, w·s + j·r]. The backward
# above sums over n inside one convolution; kept apart, the terms are each sample's gradient.
# With G groups, U_n's rows and δ_n's channels split into G runs, and group k's gradient is
# δ_nk U_nkᵀ: one batched product over (n, k).


def _unfold(
    a_prev: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """U, the windows as columns: U[n, (c, i, j), (h, w)] = a_pad[n, c, h·s + i·r, w·s + j·r], (n, c·kH·kW, L),
    as F.unfold gives it. Copied from the strided view of the windows, which on the CPU is 3–10 times
    faster than F.unfold's loop over the samples (64×32×32×32, k = 3: 33 ms against 50; 256×16×8×8: 1.0
    against 3.3; two threads)."""
    a_windows = windows(a_prev, kernel_size, stride, padding, dilation)  # (n, c, h, w, kH, kW)
    n, c, h, w = a_windows.shape[:4]
    return a_windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kernel_size[0] * kernel_size[1], h * w)


def per_sample_weight_grads(
    delta: torch.Tensor,
    a_prev: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    kernel_size: tuple[int, ...],
    groups: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """δ_nk U_nkᵀ for every sample n and group k: shape (n, o, c/G, kH, kW). ``out``, when given, receives it
    (see linear's)."""
    n, o = delta.shape[:2]
    U = by_group(_unfold(a_prev, kernel_size, stride, padding, dilation), groups)  # (n, G, c'·kH·kW, L)
    delta_by_group = by_group(delta.flatten(2), groups)  # (n, G, o', L)
    into = None if out is None else out.view(n, groups, o // groups, U.shape[2])
    grads = torch.matmul(delta_by_group, U.transpose(2, 3), out=into)  # (n, G, o', c'·kH·kW)
    return grads.view(n, o, a_prev.shape[1] // groups, *kernel_size) if out is None else out


def per_sample_bias_grads(delta: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_{h,w} δ_n for every sample n: shape (n, o)."""
    return torch.sum(delta, dim=(2, 3), out=out)


def per_sample_weight_grad_norms_squared(
    delta: torch.Tensor,
    a_prev: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    kernel_size: tuple[int, ...],
    groups: int = 1,
) -> torch.Tensor:
    """‖δ_n U_nᵀ‖², shape (n,), without forming the (n, o, c/G, kH, kW) gradients where that is cheaper.

    ‖Σ_l δ_l u_lᵀ‖² = Σ_{l,m} (δ_l · δ_m)(u_l · u_m): two (L × L) Gram matrices, with δ_l
    the o channels of δ at position l and u_l the c·kH·kW window there (per group with
    groups, summed over the groups). They cost L² (o + c·kH·kW) per sample against
    o·c·kH·kW·L / G for the gradient, so they are used while L (o + c·kH·kW) < o·c·kH·kW / G:
    few output positions, many channels.
    """
    o, L = delta.shape[1], delta.shape[2] * delta.shape[3]
    ckk = a_prev.shape[1] * kernel_size[0] * kernel_size[1]
    if L * (o + ckk) < o * ckk // groups:
        U = by_group(_unfold(a_prev, kernel_size, stride, padding, dilation), groups)  # (n, G, c'kk, L)
        delta_n = by_group(delta.flatten(2), groups)  # (n, G, o', L)
        gram_delta = delta_n.transpose(2, 3) @ delta_n  # δ_l · δ_m within each group: (n, G, L, L)
        gram_a = U.transpose(2, 3) @ U  # u_l · u_m: (n, G, L, L)
        return (gram_delta * gram_a).sum((1, 2, 3))
    grads = per_sample_weight_grads(delta, a_prev, stride, padding, dilation, kernel_size, groups=groups)
    return grads.square().sum((1, 2, 3, 4))


class Conv2dPerSample:
    """A convolution's per-sample rule (torchbp.per_sample): from a call's a_prev (the module's input) and δ,
    each parameter's per-sample gradients (weight: δ_n U_nᵀ; bias: Σ_{h,w} δ_n), or their squared norms summed."""

    def _padded(self, module: Conv2d, a_prev: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """a_prev as the convolution itself reads it, and the padding left to it."""
        if module.padding_mode != "zeros":  # the module pads in its mode, then convolves with none
            return F.pad(a_prev, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0, 0)
        padding, extra = numeric_padding(module.padding, module.kernel_size, module.dilation, module.stride)
        return (F.pad(a_prev, extra) if extra else a_prev), padding

    def grads(
        self, module: Conv2d, a_prev: torch.Tensor, delta: torch.Tensor, out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        grads = {}
        if module.weight.requires_grad:
            a_pad, padding = self._padded(module, a_prev)
            grads["weight"] = per_sample_weight_grads(
                delta,
                a_pad,
                module.stride,
                padding,
                module.dilation,
                module.kernel_size,
                out=out.get("weight"),
                groups=module.groups,
            )
        if module.bias is not None and module.bias.requires_grad:
            grads["bias"] = per_sample_bias_grads(delta, out=out.get("bias"))
        return grads

    def norms_squared(self, module: Conv2d, a_prev: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device)
        if module.weight.requires_grad:
            a_pad, padding = self._padded(module, a_prev)
            total = total + per_sample_weight_grad_norms_squared(
                delta, a_pad, module.stride, padding, module.dilation, module.kernel_size, module.groups
            )
        if module.bias is not None and module.bias.requires_grad:
            total = total + per_sample_bias_grads(delta).square().sum(1)
        return total


register(Layer(torch.nn.Conv2d, Conv2d, Conv2dFunction, conv2d, per_sample=Conv2dPerSample()))
