r"""2-d average pooling a = the mean of each window: its Function, checks, functional form and module.

Index letters: n runs over samples, c over channels, h and w over output rows and
columns, i and j over kernel rows and columns. s is the stride (one
per spatial dimension, written once below for rows and columns alike), x_pad is the
input x with ``padding`` rows and columns of zeros on either side, and
g = ∂J/∂a, shape (n, c, h, w).

    a[n,c,h,w] = (1 / M[h,w]) Σ_{i,j} x_pad[n, c, h·s + i, w·s + j]

Where ``ceil_mode`` adds a last window that runs past the padded input, its
positions past the end are left out of the sum. The divisor M[h,w] is, as native
computes it, ``divisor_override`` where given; else the count of the window's
positions inside the padded input (``count_include_pad=True``) or inside the input
itself (``False``). It is a count of rows times a count of columns: M[h,w] = R[h] C[w].
a is linear in x, each window element weighted 1 / M[h,w], so:

    ∂J/∂x_pad[n,c,u,v] = Σ_{h,w,i,j: h·s+i = u, w·s+j = v} g[n,c,h,w] / M[h,w]

and ∂J/∂x is ∂J/∂x_pad less the padding: g divided by the divisor, then spread back
over each window and summed where windows overlap (the transpose of the windows'
sum, as ``F.fold`` would make it; :func:`sum_over_windows` writes it out).
"""

from __future__ import annotations

from typing import Any

import torch

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.table import Layer, register
from torchbp.validation import ArgumentError, is_int, pool2d_pairs, validate_pool2d, validate_pool2d_options

Pair = tuple[int, int]


def validate_divisor_override(divisor_override: Any) -> None:
    """None, or an int other than 0."""
    if divisor_override is not None and not (is_int(divisor_override) and divisor_override != 0):
        if not is_int(divisor_override):
            raise TypeError(f"avg_pool2d: expected divisor_override as an int or None, got {divisor_override!r}")
        raise ArgumentError("avg_pool2d: expected divisor_override other than 0, got 0")


def validate_avg_pool2d(
    input: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool, divisor_override: Any
) -> None:
    """A floating-point (N, C, H, W) or (C, H, W) input with C, H, W ≥ 1; kernel_size and stride pairs of
    ints ≥ 1; padding a pair of ints from 0 to half the kernel; room for a window
    (:func:`torchbp.validation.validate_pool2d`); a divisor_override other than 0, where given."""
    validate_pool2d("avg_pool2d", input, kernel_size, stride, padding, (1, 1), ceil_mode)
    if divisor_override is not None:
        validate_divisor_override(divisor_override)


# -- the backward ----------------------------------------------------------------------


def sum_over_windows(delta: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, canvas: Pair) -> torch.Tensor:
    """out[n,c,rows[h,i],columns[w,j]] = Σ g[n,c,h,w] over every h, w, i, j: each window's g added to each
    of its elements, on a plane of ``canvas`` = (height, width) of zeros. rows (h, kH) and columns (w, kW)
    hold each window's row and column positions on the canvas.

    One scatter-add into the flat plane, in the order of (h, w, i, j), the order native's kernels add in,
    so the sums are theirs to the bit (F.fold, which adds kernel position by kernel position, is not).
    Differentiable: its derivative in g is the gather of the same positions, the forward's sum again.
    """
    (height, width), kH, kW = canvas, rows.shape[1], columns.shape[1]
    positions = (rows[:, None, :, None] * width + columns[None, :, None, :]).flatten()  # (h·w·kH·kW,)
    spread = delta[..., None, None].expand(*delta.shape, kH, kW).flatten(-4)  # g[n,c,h,w] at each (i, j)
    plane = delta.new_zeros((*delta.shape[:-2], height * width))
    return plane.scatter_add(-1, positions.expand_as(spread), spread).view(*delta.shape[:-2], height, width)


def window_counts(
    out: int, size: int, k: int, s: int, p: int, count_include_pad: bool, device: torch.device
) -> torch.Tensor:
    """Along one dimension, (out,): each window's positions inside the padded input, or inside the input."""
    start = torch.arange(out, device=device) * s - p  # ≥ −padding
    end = (start + k).clamp(max=size + p)  # ceil_mode's last window stops at the padded input's end
    if not count_include_pad:
        start, end = start.clamp(min=0), end.clamp(max=size)
    return end - start


def avg_pool2d_backward(
    delta: torch.Tensor,
    input_size: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """∂J/∂x[n,c,u,v] = Σ_{h,w,i,j: h·s+i−padding = u, w·s+j−padding = v} g[n,c,h,w] / M[h,w]."""
    (H, W), (h, w) = input_size, delta.shape[-2:]
    if divisor_override is not None:
        delta = delta / divisor_override
    else:
        R = window_counts(h, H, kernel_size[0], stride[0], padding[0], count_include_pad, delta.device)  # (h,)
        C = window_counts(w, W, kernel_size[1], stride[1], padding[1], count_include_pad, delta.device)  # (w,)
        delta = delta / (R[:, None] * C).to(delta.dtype)  # g / M: (n, c, h, w)
    # Onto x_pad, grown where ceil_mode's last window runs past its end; window h holds its rows h·s + i.
    canvas = (
        max(H + 2 * padding[0], (h - 1) * stride[0] + kernel_size[0]),
        max(W + 2 * padding[1], (w - 1) * stride[1] + kernel_size[1]),
    )
    rows = torch.arange(h, device=delta.device)[:, None] * stride[0] + torch.arange(kernel_size[0], device=delta.device)
    columns = torch.arange(w, device=delta.device)[:, None] * stride[1] + torch.arange(
        kernel_size[1], device=delta.device
    )
    grad_x_pad = sum_over_windows(delta, rows, columns, canvas)
    return grad_x_pad[..., padding[0] : padding[0] + H, padding[1] : padding[1] + W]  # less the padding


class AvgPool2dFunction(HandDerivedFunction):
    r"""a = the mean of each window of x_pad (``F.avg_pool2d``), with the backward derived by hand.

    Given g = ∂J/∂a and the divisor M[h,w] (``divisor_override``, or the window's count of positions
    inside the padded input or the input, as ``count_include_pad`` says):

    - ∂J/∂x[n,c,u,v] = Σ_{h,w,i,j: h·s+i−padding = u, w·s+j−padding = v} g[n,c,h,w] / M[h,w]

    ``apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)``, the
    three sizes pairs of ints. The forward is native's; the backward needs only the sizes, and saves no
    tensor. In float32 and float64 the gradient is native's to the bit (g / M, then the same additions in
    the same order); in float16 and bfloat16 to rounding (native's kernel works in a precision of its own).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        kernel_size: Pair,
        stride: Pair,
        padding: Pair,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
    ) -> torch.Tensor:
        validate_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override)
        output: torch.Tensor = torch.ops.aten.avg_pool2d(
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
        return output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, kernel_size, stride, padding, _, count_include_pad, divisor_override = inputs
        ctx.input_size = tuple(x.shape[-2:])
        ctx.windows = (kernel_size, stride, padding, count_include_pad, divisor_override)

    @staticmethod
    def backward(ctx: Any, delta: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x = avg_pool2d_backward(delta, ctx.input_size, *ctx.windows)
        return grad_x, None, None, None, None, None, None


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """2-d average pooling, as torch.nn.functional.avg_pool2d, backward by AvgPool2dFunction."""
    kernel_size, stride, padding, _ = pool2d_pairs(kernel_size, stride, padding, 1)
    return AvgPool2dFunction.apply(  # type: ignore[no-any-return]
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


class AvgPool2d(HandDerivedModule, torch.nn.AvgPool2d):
    r"""torch.nn.AvgPool2d whose backward is :class:`AvgPool2dFunction`.

    .. math:: a_{nchw} = \frac{1}{M_{hw}} \sum_{i,j} x^{pad}_{n, c, hs + i, ws + j}, \qquad
        \frac{\partial J}{\partial x^{pad}_{ncuv}} = \sum_{h,w,i,j:\, hs+i = u,\, ws+j = v} \frac{g_{nchw}}{M_{hw}}

    Args:
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override: as torch.nn.AvgPool2d's;
            sizes native would refuse at the first forward (a kernel of 0, padding over half the kernel, a
            divisor_override of 0) are refused here, at construction (``torchbp.ArgumentError``, or
            TypeError for what is not an int).

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`; Output: :math:`(N, C, H_{out}, W_{out})` or
          :math:`(C, H_{out}, W_{out})`, as native.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        validate_pool2d_options("AvgPool2d", *pool2d_pairs(kernel_size, stride, padding, 1))
        validate_divisor_override(divisor_override)
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


register(Layer(torch.nn.AvgPool2d, AvgPool2d, AvgPool2dFunction, avg_pool2d))
