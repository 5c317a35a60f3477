"""Group normalisation a = x̃ γ + β per channel: its Function, checks, functional form, module and per-sample rule.

Index letters, as in the derivation: n runs over the N samples, c over the C channels;
here k runs over the G groups (C/G channels to a group), l over the L positions of a
channel (the trailing dimensions: H·W for an image, L = 1 for an input (N, C)), and d
over the D = (C/G)·L elements of group k of sample n, its channels at every position.
Per sample and group:

    μ_nk    = (1/D) Σ_d x_nkd
    var_nk  = (1/D) Σ_d (x_nkd − μ_nk)²            (biased, as native torch)
    rstd_nk = 1 / √(var_nk + ε)
    x̃_nkd   = (x_nkd − μ_nk) · rstd_nk
    a_ncl   = x̃_ncl γ_c + β_c                       (per channel; γ = 1 and β = 0 when absent)

g = ∂J/∂a is the upstream gradient, shape of x; ∂J/∂x̃ = g ⊙ γ (g itself without γ), γ_c
the same at every position l. The code views each (N, C, *) tensor as (N, G, C/G, L),
so that d is its last two dimensions, and γ as (G, C/G, 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from torchbp.hand_derived import (
    HandDerivedFunction,
    HandDerivedModule,
    products_in_place,
    save_for_normalisation_backward,
)
from torchbp.table import Layer, register
from torchbp.validation import (
    FLOATING,
    LOWER_PRECISION_DTYPES,
    ArgumentError,
    ShapeError,
    validate_floating_and_matching,
)

# -- input checks ------------------------------------------------------------------------


def validate_group_norm(input: Any, num_groups: Any, weight: Any, bias: Any, eps: Any) -> None:
    """Floating point, one dtype and device; input (N, C, *) with num_groups dividing C and more than one value
    in some group; weight and bias (C,)."""
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        isinstance(input, torch.Tensor)
        and input.dtype in FLOATING
        and type(num_groups) is int
        and type(eps) is float
        and input.dim() >= 2
        and num_groups > 0
        and input.shape[1] % num_groups == 0
        and input.numel() != num_groups  # N · D = numel / G values per group in all: native refuses 1
        and all(
            t is None
            or (
                isinstance(t, torch.Tensor)
                and t.dtype == input.dtype
                and t.device == input.device
                and t.shape == input.shape[1:2]
            )
            for t in (weight, bias)
        )
    ):
        return
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, torch.SymInt)):
        raise TypeError(f"group_norm: expected num_groups to be an int, got {num_groups!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"group_norm: expected eps to be a Python float, got {type(eps).__name__}")
    validate_floating_and_matching("group_norm", input=input, weight=weight, bias=bias)
    if input.dim() < 2:
        raise ShapeError(f"group_norm: expected input of shape (N, C, *), at least 2-d, got input {tuple(input.shape)}")
    channels = input.shape[1]
    if num_groups <= 0:
        raise ArgumentError(f"group_norm: expected num_groups to be positive, got num_groups={num_groups}")
    if channels % num_groups != 0:
        raise ShapeError(
            f"group_norm: expected num_groups to divide the {channels} channels, got num_groups={num_groups}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ShapeError(
                f"group_norm: expected {name} of shape ({channels},), one per channel of input "
                f"{tuple(input.shape)}, got {name} {tuple(t.shape)}"
            )
    if input.numel() == num_groups:  # as F.group_norm: one sample whose every group is a single value
        raise ShapeError(
            f"group_norm: expected more than 1 value to normalise in a group, got input {tuple(input.shape)} "
            f"with num_groups={num_groups}: 1 sample of 1 value per group"
        )


# -- the forward's layout ----------------------------------------------------------------


def laid_out_as_natively(x: torch.Tensor) -> torch.Tensor:
    """x as torch.group_norm hands it to native_group_norm, whose kernels read a contiguous tensor: as it is
    when contiguous; otherwise, on the CPU, copied into the memory format its strides suggest (channels-last
    stays channels-last, whose kernel sums in another order: a stays native's to the bit), elsewhere into
    the contiguous one. ``suggest_memory_format`` is PyTorch's Python twin of the C++ rule torch.group_norm
    applies; it costs 40 µs, so only an input that needs the copy anyway asks it."""
    if x.is_contiguous():
        return x
    return x.contiguous(memory_format=suggest_memory_format(x) if x.device.type == "cpu" else torch.contiguous_format)


# -- the backward ------------------------------------------------------------------------

OVER_D = (2, 3)  # the elements d of a group, in the (N, G, C/G, L) view
OVER_N_AND_S = (0, 3)  # the samples and the positions: what ∂J/∂γ_c and ∂J/∂β_c sum over


def grouped(t: torch.Tensor, num_groups: int) -> torch.Tensor:
    """t of shape (N, C, *) viewed as (N, G, C/G, L); sizes given, not -1, so that N = 0 reshapes too."""
    return t.reshape(t.shape[0], num_groups, t.shape[1] // num_groups, math.prod(t.shape[2:]))


def normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ = (x − μ) · rstd and rstd = 1/√(var + ε) of x grouped (N, G, C/G, L), μ and var over d.

    rstd is (N, G, 1, 1), so it broadcasts over d.
    """
    centered = x - x.mean(OVER_D, keepdim=True)  # x − μ: (N, G, C/G, L)
    rstd = torch.rsqrt(centered.square().mean(OVER_D, keepdim=True) + eps)  # 1/√(var + ε): (N, G, 1, 1)
    return centered * rstd, rstd


def normalized(
    x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ = (x − μ) · rstd and rstd, x grouped (N, G, C/G, L), from the forward's μ and rstd of shape (N, G).

    Where the backward is itself differentiated (grad mode is on inside a backward only
    under ``create_graph=True`` and torch.func's transforms), μ and rstd are computed
    again from x by :func:`normalize`, whose operations carry the second derivative:
    the forward's are outputs that get no gradient.
    """
    if torch.is_grad_enabled():
        return normalize(x, eps)
    rstd = rstd[:, :, None, None]  # (N, G, 1, 1)
    centred = x - mean[:, :, None, None]
    return centred.mul_(rstd) if products_in_place(x) else centred * rstd, rstd


def group_norm_backward(
    delta: torch.Tensor,
    x: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor | None,
    weight: torch.Tensor | None,
    num_groups: int,
    eps: float,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂a, the gradients (∂J/∂x, ∂J/∂γ, ∂J/∂β), each only when needed.

    μ and rstd are the forward's, each of shape (N, G); see :func:`normalized`.
    """
    channels = delta.shape[1]
    delta_grouped = grouped(delta, num_groups)  # (N, G, C/G, L)
    grad_x = grad_weight = grad_bias = None
    if need_bias:
        grad_bias = delta_grouped.sum(OVER_N_AND_S).reshape(channels)  # Σ_{n,l} g_ncl: (C,)
    if not (need_x or need_weight):
        return grad_x, grad_weight, grad_bias
    assert x is not None and mean is not None and rstd is not None  # saved whenever ∂J/∂x or ∂J/∂γ is needed
    x_hat, rstd = normalized(grouped(x, num_groups), mean, rstd, eps)  # (N, G, C/G, L), a new tensor; (N, G, 1, 1)
    own = products_in_place(delta)  # nothing records this backward: its last steps work in place on its new tensors
    if need_x:
        gamma = weight.reshape(num_groups, channels // num_groups, 1) if weight is not None else None  # (G, C/G, 1)
        g_hat = delta_grouped * gamma if gamma is not None else delta_grouped  # ∂J/∂x̃ = g ⊙ γ: (N, G, C/G, L)
        mean_g_hat = g_hat.mean(OVER_D, keepdim=True)  # mean_d(∂J/∂x̃): (N, G, 1, 1)
        mean_g_hat_x_hat = (g_hat * x_hat).mean(OVER_D, keepdim=True)  # mean_d(∂J/∂x̃ ⊙ x̃): (N, G, 1, 1)
        if own and gamma is not None:  # into ∂J/∂x̃, a new tensor here (see normal_distribution in gelu.py for why)
            grad_x = g_hat.sub_(mean_g_hat).addcmul_(x_hat, mean_g_hat_x_hat, value=-1).mul_(rstd)
        else:
            grad_x = rstd * (g_hat - mean_g_hat - x_hat * mean_g_hat_x_hat)
        grad_x = grad_x.reshape(delta.shape)  # (N, C, *)
    if need_weight:  # Σ_{n,l} g_ncl x̃_ncl: (C,)
        grad_weight = (x_hat.mul_(delta_grouped) if own else delta_grouped * x_hat).sum(OVER_N_AND_S).reshape(channels)
    return grad_x, grad_weight, grad_bias


class GroupNormFunction(HandDerivedFunction):
    r"""a = x̃ γ + β with μ and var over each group of each sample, with the backward derived by hand.

    ``GroupNormFunction.apply(input, num_groups, weight, bias, eps)`` as
    ``torch.nn.functional.group_norm``. Given g = ∂J/∂a and ∂J/∂x̃ = g ⊙ γ:

    - ∂J/∂β_c = Σ_{n,l} g_ncl
    - ∂J/∂γ_c = Σ_{n,l} g_ncl x̃_ncl
    - ∂J/∂x_nkd = rstd_nk · (∂J/∂x̃_nkd − mean_d(∂J/∂x̃_nk) − x̃_nkd · mean_d(∂J/∂x̃_nk ⊙ x̃_nk))
      (the three-term gradient)

    The input gradient is layer normalisation's over the D elements of each group, and
    the parameters' sum over samples and positions as a per-channel affine map's do.

    The forward is ``torch.native_group_norm``, and like it ``apply`` returns (a, μ, rstd),
    μ and rstd of shape (N, G) and not differentiable: a is native's to the bit, and the
    backward reads x̃ = (x − μ) · rstd from the forward's own statistics. :func:`group_norm`
    returns a alone, as F.group_norm. Saved: the input, μ and rstd when ∂J/∂x or ∂J/∂γ is
    asked for, γ when ∂J/∂x is (∂J/∂β alone saves nothing). When the backward is itself
    differentiated, it computes μ and rstd again from the input, by operations that carry
    the second derivative.

    Gradients agree with native's to rounding, not to the bit: native's CPU kernel sums
    g and g ⊙ x per channel first and forms ∂J/∂x as rstd·γ·g + b·x + c (b, c per group),
    an order torch operations cannot reproduce. For a group of a single element (D = 1)
    the three-term form gives the exact zero where native's gradient is rounding noise.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        num_groups: int,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Floating point, one dtype and device, input (N, C, *) with G dividing C, weight and bias (C,).
        validate_group_norm(input, num_groups, weight, bias, eps)
        n, channels, positions = input.shape[0], input.shape[1], math.prod(input.shape[2:])
        x = laid_out_as_natively(input)
        gamma, beta = (t if t is None else t.contiguous() for t in (weight, bias))
        return torch.native_group_norm(x, gamma, beta, n, channels, positions, num_groups, eps)  # a, μ, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, num_groups, weight, _, eps = inputs
        _, mean, rstd = output
        need_x, _, need_weight, _, _ = ctx.needs_input_grad
        save_for_normalisation_backward(ctx, x, mean, rstd, weight, need_x, need_weight)
        ctx.num_groups, ctx.eps = num_groups, eps

    @staticmethod
    def backward(ctx: Any, delta: torch.Tensor | None, *_: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        if delta is None:  # a took no part in J
            return None, None, None, None, None
        x, mean, rstd, weight = ctx.saved_tensors
        need_x, _, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = group_norm_backward(
            delta, x, mean, rstd, weight, ctx.num_groups, ctx.eps, need_x, need_weight, need_bias
        )
        return grad_x, None, grad_weight, grad_bias, None


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group normalisation over each group of channels of each sample, as torch.nn.functional.group_norm,
    backward by GroupNormFunction. It runs in its input's dtype, as the native one does under ``torch.autocast``
    on the CPU; a float16 or bfloat16 input with float32 parameters is normalised in float32, as natively."""
    if (
        isinstance(input, torch.Tensor)
        and input.dtype in LOWER_PRECISION_DTYPES
        and any(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in (weight, bias))
    ):
        # A float16 or bfloat16 input with float32 parameters (a convolution's output under autocast): native's
        # mixed kernel computes in float32 and returns the input's dtype; so does this.
        output, _, _ = GroupNormFunction.apply(input.float(), num_groups, weight, bias, eps)
        return output.to(input.dtype)  # type: ignore[no-any-return]
    output, _, _ = GroupNormFunction.apply(input, num_groups, weight, bias, eps)  # a, μ, rstd
    return output  # type: ignore[no-any-return]


class GroupNorm(HandDerivedModule, torch.nn.GroupNorm):
    r"""torch.nn.GroupNorm whose backward is :class:`GroupNormFunction`.

    .. math:: a = \frac{x - \mu}{\sqrt{\mathrm{var} + \epsilon}} \gamma + \beta

    with μ and var over each of the num_groups groups of channels of each sample, γ and β per channel.

    Args:
        num_groups, num_channels, eps, affine, device, dtype, bias: as torch.nn.GroupNorm.

    Shape:
        - Input: :math:`(N, C, *)` with :math:`C = \text{num\_channels}`; Output: the same shape.

    Examples::

        >>> m = torchbp.nn.GroupNorm(3, 6)  # 6 channels in 3 groups
        >>> output = m(torch.randn(20, 6, 10, 10))
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


# -- the per-sample view ---------------------------------------------------------------
# ∂J/∂γ_c = Σ_{n,l} g_ncl x̃_ncl and ∂J/∂β_c = Σ_{n,l} g_ncl: summed over the positions l
# alone, the terms are each sample's own gradient. g = ∂J/∂a and a_prev = x arrive as
# (n, C, *) and give (n, C).


def _positions(t: torch.Tensor) -> tuple[int, ...]:
    """The dimensions after the channels, which a sample's gradient sums over."""
    return tuple(range(2, t.dim()))


def per_sample_weight_grads(
    delta: torch.Tensor, a_prev: torch.Tensor, num_groups: int, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_l g_ncl x̃_ncl for every sample n: shape (n, C).

    x̃ is recomputed from a_prev by the native forward without affine, the forward's
    own x̃. ``out``, when given, receives the result.
    """
    x_hat = F.group_norm(a_prev, num_groups, eps=eps)
    positions = _positions(delta)
    if not positions:
        return torch.mul(delta, x_hat, out=out)
    return torch.sum(delta * x_hat, positions, out=out)


def per_sample_bias_grads(delta: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_l g_ncl for every sample n: shape (n, C)."""
    positions = _positions(delta)
    if not positions:
        return delta.clone() if out is None else out.copy_(delta)
    return torch.sum(delta, positions, out=out)


def per_sample_weight_grad_norms_squared(
    delta: torch.Tensor, a_prev: torch.Tensor, num_groups: int, eps: float
) -> torch.Tensor:
    """‖Σ_l g_n,l ⊙ x̃_n,l‖², shape (n,). The gradient is no larger than g, so it is formed."""
    return per_sample_weight_grads(delta, a_prev, num_groups, eps).square().sum(1)


def per_sample_bias_grad_norms_squared(delta: torch.Tensor) -> torch.Tensor:
    """‖Σ_l g_n,l‖², shape (n,)."""
    positions = _positions(delta)
    return (delta.sum(positions) if positions else delta).square().sum(1)


class GroupNormPerSample:
    """A group normalisation's per-sample rule (torchbp.per_sample): from a call's a_prev and g, each parameter's
    per-sample gradients (weight: Σ_l g_n,l ⊙ x̃_n,l; bias: Σ_l g_n,l; both (n, C)), or their squared norms
    summed."""

    def grads(
        self, module: GroupNorm, a_prev: torch.Tensor, delta: torch.Tensor, out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        grads = {}
        if module.weight is not None and module.weight.requires_grad:
            grads["weight"] = per_sample_weight_grads(
                delta, a_prev, module.num_groups, module.eps, out=out.get("weight")
            )
        if module.bias is not None and module.bias.requires_grad:
            grads["bias"] = per_sample_bias_grads(delta, out=out.get("bias"))
        return grads

    def norms_squared(self, module: GroupNorm, a_prev: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device)
        if module.weight is not None and module.weight.requires_grad:
            total = total + per_sample_weight_grad_norms_squared(delta, a_prev, module.num_groups, module.eps)
        if module.bias is not None and module.bias.requires_grad:
            total = total + per_sample_bias_grad_norms_squared(delta)
        return total


register(Layer(torch.nn.GroupNorm, GroupNorm, GroupNormFunction, group_norm, per_sample=GroupNormPerSample()))
