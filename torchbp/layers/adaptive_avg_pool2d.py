r"""2-d adaptive average pooling to a given output size: its Function, checks, functional form and module.

Index letters: n runs over samples, c over channels, h and w over the output's rows
and columns (h_out × w_out of them), u and v over the input's (H × W). Output row h
averages the input rows of its window [a_h, b_h) and output column w the columns
[a_w, b_w), as native chooses them:

    a_h = ⌊h·H / h_out⌋,   b_h = ⌈(h + 1)·H / h_out⌉,   k_h = b_h − a_h    (and likewise a_w, b_w, k_w)

    a[n,c,h,w] = (1 / (k_h k_w)) Σ_{a_h ≤ u < b_h} Σ_{a_w ≤ v < b_w} x[n,c,u,v]

The windows need not share a size, and neighbouring ones may overlap by a row or a
column. g = ∂J/∂a, shape (n, c, h_out, w_out). a is linear in x, so:

    ∂J/∂x[n,c,u,v] = Σ_{h: a_h ≤ u < b_h} Σ_{w: a_w ≤ v < b_w} g[n,c,h,w] / k_h / k_w

g divided by each window's size, then spread back over the window and summed where
windows overlap (as for average pooling: :func:`torchbp.layers.avg_pool2d.sum_over_windows`).
"""

from __future__ import annotations

from typing import Any

import torch

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.layers.avg_pool2d import sum_over_windows
from torchbp.table import Layer, register
from torchbp.validation import FLOATING, ArgumentError, ShapeError, is_int, shape_text, validate_floating

Pair = tuple[int, int]


def validate_output_size(output_size: Any) -> None:
    """An int ≥ 0, or a pair of ints ≥ 0 or None (None keeps the input's size)."""
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    expected = f"adaptive_avg_pool2d: expected output_size as an int, or a pair of ints or None, got {output_size!r}"
    if not (isinstance(output_size, (tuple, list)) or is_int(output_size)) or not all(
        size is None or is_int(size) for size in sizes
    ):
        raise TypeError(expected)
    if len(sizes) != 2 and not is_int(output_size):  # native raises RuntimeError here, TypeError above
        raise ArgumentError(expected)
    if any(size is not None and size < 0 for size in sizes):
        raise ArgumentError(f"adaptive_avg_pool2d: expected output_size of ints ≥ 0, got {output_size!r}")


def validate_adaptive_avg_pool2d(input: Any, output_size: Any) -> None:
    """A floating-point (N, C, H, W) or (C, H, W) input with H, W ≥ 1, and an output_size of two ints ≥ 0."""
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        isinstance(input, torch.Tensor)
        and input.dtype in FLOATING
        and input.dim() in (3, 4)
        and min(input.shape[-2:]) > 0
        and isinstance(output_size, (tuple, list))
        and len(output_size) == 2
        and is_int(output_size[0])
        and is_int(output_size[1])
        and min(output_size) >= 0
    ):
        return
    validate_floating("adaptive_avg_pool2d", input)
    validate_output_size(output_size)
    if not isinstance(output_size, (tuple, list)) or None in output_size:  # the functional form resolves these
        raise TypeError(f"AdaptiveAvgPool2dFunction: expected output_size as two ints, got {output_size!r}")
    raise ShapeError(
        f"adaptive_avg_pool2d: expected input of shape (N, C, H, W) or (C, H, W) with H and W at least 1, "
        f"got {shape_text(input)}"
    )


# -- the backward ----------------------------------------------------------------------


def windows(out: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one dimension, (out,) each: the windows' first positions a = ⌊h·size/out⌋ and their ends
    b = ⌈(h + 1)·size/out⌉."""
    h = torch.arange(out, device=device)
    return h * size // out, ((h + 1) * size + out - 1) // out


def window_positions(a: torch.Tensor, b: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """(out, K): the positions a, a + 1, … of each window, K the longest a window can be (⌈size/out⌉ + 1);
    those past its end b are sent to position ``size``, a row or column past the input that is dropped."""
    longest = -(-size // max(out, 1)) + 1
    positions = a[:, None] + torch.arange(longest, device=a.device)
    return torch.where(positions < b[:, None], positions, size)


def adaptive_avg_pool2d_backward(delta: torch.Tensor, input_size: Pair) -> torch.Tensor:
    """∂J/∂x[n,c,u,v] = Σ_{h: a_h ≤ u < b_h} Σ_{w: a_w ≤ v < b_w} g[n,c,h,w] / k_h / k_w. Where the windows tile
    the plane (a global pool, or sizes that divide), each element takes its one window's share, spread by
    a copy; elsewhere the shares are added by :func:`sum_over_windows`."""
    (H, W), (h, w) = input_size, delta.shape[-2:]
    if h == 1 and w == 1:  # native averages the whole plane as a mean, whose gradient is g / (H·W) everywhere
        return (delta / (H * W)).expand(*delta.shape[:-2], H, W).contiguous()
    if h and w and H % h == 0 and W % w == 0:  # windows that tile the plane: each element in exactly one
        k_h, k_w = H // h, W // w
        share = delta / k_h / k_w  # divided by k_h, then by k_w, as native's kernel divides
        return share[..., :, None, :, None].expand(*delta.shape[:-2], h, k_h, w, k_w).reshape(*delta.shape[:-2], H, W)
    (a_h, b_h), (a_w, b_w) = windows(h, H, delta.device), windows(w, W, delta.device)
    delta = delta / (b_h - a_h).to(delta.dtype)[:, None] / (b_w - a_w).to(delta.dtype)  # as native divides
    rows, columns = window_positions(a_h, b_h, h, H), window_positions(a_w, b_w, w, W)
    return sum_over_windows(delta, rows, columns, (H + 1, W + 1))[..., :H, :W]


class AdaptiveAvgPool2dFunction(HandDerivedFunction):
    r"""a = the mean of each adaptive window of x (``F.adaptive_avg_pool2d``), with the backward derived
    by hand.

    Given g = ∂J/∂a and the windows [a_h, b_h) × [a_w, b_w) of sizes k_h × k_w:

    - ∂J/∂x[n,c,u,v] = Σ_{h: a_h ≤ u < b_h} Σ_{w: a_w ≤ v < b_w} g[n,c,h,w] / k_h / k_w

    ``apply(input, output_size)``, output_size a pair of ints (None resolved by :func:`adaptive_avg_pool2d`).
    The forward is native's (for a 1 × 1 output, native's mean over the plane); the backward needs only
    the sizes and saves no tensor. In float32 and float64 the gradient is native's to the bit (the same
    divisions, then the same additions in the same order); in float16 and bfloat16 to rounding.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, output_size: Pair) -> torch.Tensor:
        validate_adaptive_avg_pool2d(input, output_size)
        return torch._C._nn.adaptive_avg_pool2d(input, output_size)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.input_size = tuple(inputs[0].shape[-2:])

    @staticmethod
    def backward(ctx: Any, delta: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        return adaptive_avg_pool2d_backward(delta, ctx.input_size), None


def adaptive_avg_pool2d(input: torch.Tensor, output_size: int | tuple[int | None, ...] | None) -> torch.Tensor:
    """2-d adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d, backward by
    AdaptiveAvgPool2dFunction. An int is the size of both dimensions; None in a pair keeps the input's."""
    if is_int(output_size):
        output_size = (output_size, output_size)  # type: ignore[assignment]
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2 and isinstance(input, torch.Tensor):
        output_size = tuple(input.shape[i - 2] if size is None else size for i, size in enumerate(output_size))
    return AdaptiveAvgPool2dFunction.apply(input, output_size)  # type: ignore[no-any-return]


class AdaptiveAvgPool2d(HandDerivedModule, torch.nn.AdaptiveAvgPool2d):
    r"""torch.nn.AdaptiveAvgPool2d whose backward is :class:`AdaptiveAvgPool2dFunction`.

    .. math:: a_{nchw} = \frac{1}{k_h k_w} \sum_{a_h \le u < b_h} \sum_{a_w \le v < b_w} x_{ncuv}, \qquad
        \frac{\partial J}{\partial x_{ncuv}} = \sum_{h:\, a_h \le u < b_h} \sum_{w:\, a_w \le v < b_w}
        \frac{g_{nchw}}{k_h k_w}

    Args:
        output_size: as torch.nn.AdaptiveAvgPool2d's (an int, or a pair of ints or None); a negative size,
            which native refuses at the first forward, is refused here, at construction
            (``torchbp.ArgumentError``, or TypeError for what is not an int or None).

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`; Output: :math:`(N, C, h_{out}, w_{out})` or
          :math:`(C, h_{out}, w_{out})`.
    """

    def __init__(self, output_size: int | tuple[int | None, ...] | None) -> None:
        validate_output_size(output_size)
        super().__init__(output_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(input, self.output_size)


register(Layer(torch.nn.AdaptiveAvgPool2d, AdaptiveAvgPool2d, AdaptiveAvgPool2dFunction, adaptive_avg_pool2d))
