r"""2-d max pooling a = max over each window: its Function, checks, functional form and module.

Index letters: n runs over samples, c over channels, h and w over output rows and
columns, i and j over kernel rows and columns. s and r are the stride and the
dilation (one of each per spatial dimension, written once below for rows and
columns alike), and x_pad is the input x with ``padding`` rows and columns of −∞ on
either side. g = ∂J/∂a, shape (n, c, h, w).

    a[n,c,h,w] = max_{i,j} x_pad[n, c, h·s + i·r, w·s + j·r]

a[n,c,h,w] is the one element of its window that the max picks; call its position in
the input plane m[n,c,h,w] (native's forward returns it, as the flat index u·W + v
into the H × W plane; among equal values it is the one native's kernel keeps). The
max is locally that element itself, so ∂a[n,c,h,w]/∂x[n,c,u,v] = [m[n,c,h,w] = (u, v)],
and the chain rule sums over the windows that picked each element:

    ∂J/∂x[n,c,u,v] = Σ_{h,w: m[n,c,h,w] = (u,v)} g[n,c,h,w]

Overlapping windows (a stride below the kernel) may pick one element several times;
their gradients add up. With dilation a window can fall wholly in the padding (its positions
step over the input): native gives −∞ there and an index outside the window, and its
own backward then writes outside the input or to an element the window does not hold.
Such an output is the constant −∞, whose derivative is 0: here it sends nothing anywhere.
"""

from __future__ import annotations

from typing import Any

import torch

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.table import Layer, register
from torchbp.validation import pool2d_pairs, validate_pool2d, validate_pool2d_options

Pair = tuple[int, int]


def validate_max_pool2d(
    input: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
) -> None:
    """A floating-point (N, C, H, W) or (C, H, W) input with C, H, W ≥ 1; kernel_size, stride and dilation
    pairs of ints ≥ 1; padding a pair of ints from 0 to half the kernel; room for a window (shared with
    avg_pool2d: :func:`torchbp.validation.validate_pool2d`)."""
    validate_pool2d("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)


# -- the backward ----------------------------------------------------------------------


def reaches_input(out: int, size: int, k: int, s: int, p: int, d: int, device: torch.device) -> torch.Tensor:
    """Along one dimension, (out,): does window h hold an input position, some h·s − padding + i·r in [0, size)?"""
    positions = torch.arange(out, device=device)[:, None] * s - p + torch.arange(k, device=device) * d
    return ((positions >= 0) & (positions < size)).any(1)


def max_pool2d_backward(
    delta: torch.Tensor,
    m: torch.Tensor,
    input_shape: torch.Size,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> torch.Tensor:
    """∂J/∂x[n,c,u,v] = Σ_{h,w: m[n,c,h,w] = (u,v)} g[n,c,h,w]: g scatter-added into the flat input plane at m.

    The windows are added in the order of (h, w), as native's kernel adds them, so the sums are its bits.
    """
    H, W = input_shape[-2:]
    if max(dilation) > 1:  # only a dilated window can miss the input: send its g nowhere (an added 0)
        h, w = delta.shape[-2:]
        rows = reaches_input(h, H, kernel_size[0], stride[0], padding[0], dilation[0], delta.device)
        columns = reaches_input(w, W, kernel_size[1], stride[1], padding[1], dilation[1], delta.device)
        delta = torch.where(rows[:, None] & columns, delta, 0)
        m = m.clamp(max=H * W - 1)
    plane = delta.new_zeros((*input_shape[:-2], H * W))  # (n, c, H·W)
    return plane.scatter_add(-1, m.flatten(-2), delta.flatten(-2)).view(input_shape)


class MaxPool2dFunction(HandDerivedFunction):
    r"""a = max over each window of x_pad (``F.max_pool2d``), with the backward derived by hand.

    Given g = ∂J/∂a and m, the position in the input plane that each window's max picked:

    - ∂J/∂x[n,c,u,v] = Σ_{h,w: m[n,c,h,w] = (u,v)} g[n,c,h,w]

    ``apply(input, kernel_size, stride, padding, dilation, ceil_mode)``, the four sizes pairs of ints,
    returns (a, m) as ``torch.ops.aten.max_pool2d_with_indices``, which is its forward: a is native's to
    the bit, and m, not differentiable, is native's choice among equal values, so the gradient goes to
    the element native's goes to. Saved: m alone. In float32 and float64 the gradient is native's to the
    bit (the same additions in the same order); in float16 and bfloat16, where windows overlap, to
    rounding (native's kernel adds in a precision of its own).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        validate_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
        return torch.ops.aten.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)  # type: ignore[no-any-return]  # torch.ops is untyped

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, kernel_size, stride, padding, dilation, _ = inputs
        _, m = output
        ctx.mark_non_differentiable(m)
        ctx.set_materialize_grads(False)  # no zeros made for m, which gets no gradient
        ctx.save_for_backward(m)
        ctx.input_shape, ctx.windows = x.shape, (kernel_size, stride, padding, dilation)

    @staticmethod
    def backward(ctx: Any, delta: torch.Tensor | None, _: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        if delta is None:  # a took no part in J
            return None, None, None, None, None, None
        (m,) = ctx.saved_tensors
        return max_pool2d_backward(delta, m, ctx.input_shape, *ctx.windows), None, None, None, None, None


def max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] | None = None,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """2-d max pooling, as torch.nn.functional.max_pool2d, backward by MaxPool2dFunction: the output, or
    with ``return_indices=True`` (output, indices), the indices not differentiable, as native."""
    output, indices = MaxPool2dFunction.apply(input, *pool2d_pairs(kernel_size, stride, padding, dilation), ceil_mode)
    return (output, indices) if return_indices else output


class MaxPool2d(HandDerivedModule, torch.nn.MaxPool2d):
    r"""torch.nn.MaxPool2d whose backward is :class:`MaxPool2dFunction`.

    .. math:: a_{nchw} = \max_{i,j} x^{pad}_{n, c, hs + ir, ws + jr}, \qquad
        \frac{\partial J}{\partial x_{ncuv}} = \sum_{h,w:\, m_{nchw} = (u,v)} g_{nchw}

    Args:
        kernel_size, stride, padding, dilation, return_indices, ceil_mode: as torch.nn.MaxPool2d's; sizes
            native would refuse at the first forward (a kernel of 0, padding over half the kernel) are
            refused here, at construction (``torchbp.ArgumentError``, or TypeError for what is not an int).

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`; Output: :math:`(N, C, H_{out}, W_{out})` or
          :math:`(C, H_{out}, W_{out})`, as native.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        validate_pool2d_options("MaxPool2d", *pool2d_pairs(kernel_size, stride, padding, dilation))
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)

    def forward(self, input: torch.Tensor) -> Any:
        return max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


register(Layer(torch.nn.MaxPool2d, MaxPool2d, MaxPool2dFunction, max_pool2d))
