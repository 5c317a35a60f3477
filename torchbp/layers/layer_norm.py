"""Layer normalisation a = x̃ ⊙ γ + β: its Function, checks, functional form, module and per-sample rule.

Index letters, as in the derivation: n runs over samples (every dimension before
the normalized ones counts as one more sample axis), d over the D elements of
the normalized dimensions (the last len(normalized_shape) dimensions). Per sample:

    μ_n    = (1/D) Σ_d x_nd
    var_n  = (1/D) Σ_d (x_nd − μ_n)²            (biased, as native torch)
    rstd_n = 1 / √(var_n + ε)
    x̃_nd   = (x_nd − μ_n) · rstd_n
    a_nd   = x̃_nd γ_d + β_d                      (γ = 1 and β = 0 when absent)

g = ∂J/∂a is the upstream gradient, shape of x; ∂J/∂x̃ = g ⊙ γ (g itself without γ).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from torchbp.hand_derived import (
    HandDerivedFunction,
    HandDerivedModule,
    products_in_place,
    save_for_normalisation_backward,
)
from torchbp.table import Layer, register
from torchbp.validation import FLOATING, LOWER_PRECISION_DTYPES, ShapeError, validate_floating_and_matching

# -- input checks ------------------------------------------------------------------------


def validate_layer_norm(input: Any, normalized_shape: Any, weight: Any, bias: Any, eps: Any) -> None:
    """Floating point, one dtype and device; input (*, *normalized_shape), weight and bias normalized_shape."""
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else None
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        shape
        and isinstance(input, torch.Tensor)
        and input.dtype in FLOATING
        and type(eps) is float
        and all(type(size) is int for size in shape)
        and input.shape[input.dim() - len(shape) :] == shape
        and all(
            t is None
            or (
                isinstance(t, torch.Tensor) and t.dtype == input.dtype and t.device == input.device and t.shape == shape
            )
            for t in (weight, bias)
        )
    ):
        return
    if shape is None or not all(isinstance(size, (int, torch.SymInt)) and not isinstance(size, bool) for size in shape):
        raise TypeError(f"layer_norm: expected normalized_shape to be a tuple of ints, got {normalized_shape!r}")
    if not shape:
        raise ShapeError("layer_norm: expected normalized_shape of at least one dimension, got ()")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"layer_norm: expected eps to be a Python float, got {type(eps).__name__}")
    validate_floating_and_matching("layer_norm", input=input, weight=weight, bias=bias)
    if input.dim() < len(shape) or input.shape[input.dim() - len(shape) :] != shape:
        raise ShapeError(
            f"layer_norm: expected input of shape (*, {', '.join(map(str, shape))}) to match normalized_shape "
            f"{shape}, got input {tuple(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != shape:
            raise ShapeError(
                f"layer_norm: expected {name} of shape normalized_shape {shape}, got {name} {tuple(t.shape)}"
            )


# -- the backward ------------------------------------------------------------------------


def normalize(x: torch.Tensor, normalized_ndim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ = (x − μ) · rstd and rstd = 1/√(var + ε), μ and var over the normalized dimensions.

    rstd has x's shape with the normalized dimensions of size 1, so it broadcasts over d.
    """
    over_d = tuple(range(-normalized_ndim, 0))
    centered = x - x.mean(over_d, keepdim=True)  # x − μ: (*, D)
    rstd = torch.rsqrt(centered.square().mean(over_d, keepdim=True) + eps)  # 1/√(var + ε): (*, 1)
    return centered * rstd, rstd


def normalized(
    x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, normalized_ndim: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ = (x − μ) · rstd and rstd, from the forward's μ and rstd.

    Where the backward is itself differentiated (grad mode is on inside a backward only
    under ``create_graph=True`` and torch.func's transforms), μ and rstd are computed
    again from x by :func:`normalize`, whose operations carry the second derivative:
    the forward's are outputs that get no gradient.
    """
    if torch.is_grad_enabled():
        return normalize(x, normalized_ndim, eps)
    centred = x - mean
    return centred.mul_(rstd) if products_in_place(x) else centred * rstd, rstd


def _sum_over_samples(t: torch.Tensor, sample_dims: tuple[int, ...]) -> torch.Tensor:
    """Σ_n t_n; an input that is one sample (no sample dimension) is its own sum (sum(()) would sum all)."""
    return t.sum(sample_dims) if sample_dims else t


def layer_norm_backward(
    g: torch.Tensor,
    x: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor | None,
    weight: torch.Tensor | None,
    normalized_ndim: int,
    eps: float,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂a, the gradients (∂J/∂x, ∂J/∂γ, ∂J/∂β), each only when needed.

    μ and rstd are the forward's, each of shape (*, 1); see :func:`normalized`.
    """
    over_d = tuple(range(-normalized_ndim, 0))  # the normalized dimensions
    over_n = tuple(range(g.dim() - normalized_ndim))  # the sample dimensions
    grad_x = grad_weight = grad_bias = None
    if need_bias:
        grad_bias = _sum_over_samples(g, over_n)  # Σ_n g_n: normalized_shape
    if not (need_x or need_weight):
        return grad_x, grad_weight, grad_bias
    assert x is not None and mean is not None and rstd is not None  # saved whenever ∂J/∂x or ∂J/∂γ is needed
    x_hat, rstd = normalized(x, mean, rstd, normalized_ndim, eps)  # (*, D), a new tensor, and (*, 1)
    own = products_in_place(g)  # nothing records this backward: its last steps work in place on its new tensors
    if need_x:
        g_hat = g * weight if weight is not None else g  # ∂J/∂x̃ = g ⊙ γ: (*, D)
        mean_g_hat = g_hat.mean(over_d, keepdim=True)  # mean_d(∂J/∂x̃): (*, 1)
        mean_g_hat_x_hat = (g_hat * x_hat).mean(over_d, keepdim=True)  # mean_d(∂J/∂x̃ ⊙ x̃): (*, 1)
        if own and weight is not None:  # into ∂J/∂x̃, a new tensor here (see normal_distribution in gelu.py for why)
            grad_x = g_hat.sub_(mean_g_hat).addcmul_(x_hat, mean_g_hat_x_hat, value=-1).mul_(rstd)
        else:
            grad_x = rstd * (g_hat - mean_g_hat - x_hat * mean_g_hat_x_hat)
    if need_weight:  # Σ_n g_n ⊙ x̃_n: normalized_shape
        grad_weight = _sum_over_samples(x_hat.mul_(g) if own else g * x_hat, over_n)
    return grad_x, grad_weight, grad_bias


class LayerNormFunction(HandDerivedFunction):
    r"""a = x̃ ⊙ γ + β over the normalized dimensions, with the backward derived by hand.

    ``LayerNormFunction.apply(input, normalized_shape, weight, bias, eps)`` as
    ``torch.nn.functional.layer_norm``. Given g = ∂J/∂a and ∂J/∂x̃ = g ⊙ γ:

    - ∂J/∂β = Σ_n g_n
    - ∂J/∂γ = Σ_n g_n ⊙ x̃_n
    - ∂J/∂x = rstd · (∂J/∂x̃ − mean_d(∂J/∂x̃) − x̃ · mean_d(∂J/∂x̃ ⊙ x̃))     (the three-term input gradient)

    The forward is ``torch.native_layer_norm``, and like it ``apply`` returns
    (a, μ, rstd), μ and rstd of shape (*, 1) and not differentiable: a is
    native's to the bit, and the backward reads x̃ = (x − μ) · rstd from the
    forward's own statistics instead of reducing x twice again (a Function can
    save only its inputs and outputs). :func:`layer_norm` returns a alone, as
    F.layer_norm. Saved: the input, μ and rstd when ∂J/∂x or ∂J/∂γ is asked for,
    γ when ∂J/∂x is (∂J/∂β alone saves nothing). When the backward is itself
    differentiated, it computes μ and rstd again from the input, by operations
    that carry the second derivative.

    Gradients agree with native's to rounding, not to the bit: native's CPU
    kernel forms ∂J/∂x as rstd·∂J/∂x̃ + b·x + c (b, c per-sample constants from SIMD
    lane-wise sums), recomputes x̃ for ∂J/∂γ in a fused multiply-add, and sums
    ∂J/∂γ and ∂J/∂β row by row in one buffer per thread, so its bits depend on
    the thread count; torch operations cannot reproduce that order. The
    three-term form avoids the cancellation of b·x + c where |μ| ≫ 1/rstd, and for a
    single normalized element (D = 1) gives the exact zero where native's
    gradient is rounding noise.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        normalized_shape: tuple[int, ...],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Floating point, one dtype and device, shapes (*, *normalized_shape) and normalized_shape.
        validate_layer_norm(input, normalized_shape, weight, bias, eps)
        return torch.native_layer_norm(input, normalized_shape, weight, bias, eps)  # a, μ, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, normalized_shape, weight, _, eps = inputs
        _, mean, rstd = output
        need_x, _, need_weight, _, _ = ctx.needs_input_grad
        save_for_normalisation_backward(ctx, x, mean, rstd, weight, need_x, need_weight)
        ctx.normalized_ndim, ctx.eps = len(normalized_shape), eps

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, *_: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        if g is None:  # a took no part in J
            return None, None, None, None, None
        x, mean, rstd, weight = ctx.saved_tensors
        need_x, _, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = layer_norm_backward(
            g, x, mean, rstd, weight, ctx.normalized_ndim, ctx.eps, need_x, need_weight, need_bias
        )
        return grad_x, None, grad_weight, grad_bias, None


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalisation over the last dimensions, as torch.nn.functional.layer_norm, backward by
    LayerNormFunction. It runs in its input's dtype, as the native one does under ``torch.autocast`` on the
    CPU; a float16 or bfloat16 input with float32 parameters is normalised in float32, as natively."""
    if (
        isinstance(input, torch.Tensor)
        and input.dtype in LOWER_PRECISION_DTYPES
        and any(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in (weight, bias))
    ):
        # A float16 or bfloat16 input with float32 parameters (a Linear's output under autocast): native's
        # mixed kernel computes in float32 and returns the input's dtype; so does this.
        output, _, _ = LayerNormFunction.apply(input.float(), tuple(normalized_shape), weight, bias, eps)
        return output.to(input.dtype)  # type: ignore[no-any-return]
    output, _, _ = LayerNormFunction.apply(input, tuple(normalized_shape), weight, bias, eps)  # a, μ, rstd
    return output  # type: ignore[no-any-return]


class LayerNorm(HandDerivedModule, torch.nn.LayerNorm):
    r"""torch.nn.LayerNorm whose backward is :class:`LayerNormFunction`.

    .. math:: a = \frac{x - \mu}{\sqrt{\mathrm{var} + \epsilon}} \odot \gamma + \beta

    Args:
        normalized_shape, eps, elementwise_affine, bias, device, dtype: as torch.nn.LayerNorm.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; Output: the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


# -- the per-sample view ---------------------------------------------------------------
# ∂J/∂γ = Σ_n g_n ⊙ x̃_n and ∂J/∂β = Σ_n g_n: kept apart, the terms are each sample's own
# gradient. The sample is the first dimension; dimensions between it and the normalized
# ones (t) are summed within a sample: g and a_prev of shape (n, t, *normalized_shape)
# give (n, *normalized_shape). g = ∂J/∂a arrives at the output (as ``delta``), a_prev is the input x.


def _middle_dims(t: torch.Tensor, normalized_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dimensions between the sample dimension and the normalized ones."""
    return tuple(range(1, t.dim() - len(normalized_shape)))


def per_sample_weight_grads(
    delta: torch.Tensor,
    a_prev: torch.Tensor,
    normalized_shape: tuple[int, ...],
    eps: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_t g_n,t ⊙ x̃_n,t for every sample n: shape (n, *normalized_shape).

    x̃ is recomputed from a_prev by the native forward without affine, the
    forward's own x̃. ``out``, when given, receives the result.
    """
    x_hat = F.layer_norm(a_prev, normalized_shape, eps=eps)
    middle = _middle_dims(delta, normalized_shape)
    if not middle:
        return torch.mul(delta, x_hat, out=out)
    return torch.sum(delta * x_hat, middle, out=out)


def per_sample_bias_grads(
    delta: torch.Tensor, normalized_shape: tuple[int, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_t g_n,t for every sample n: shape (n, *normalized_shape)."""
    middle = _middle_dims(delta, normalized_shape)
    if not middle:
        return delta.clone() if out is None else out.copy_(delta)
    return torch.sum(delta, middle, out=out)


def _norms_squared(per_sample: torch.Tensor) -> torch.Tensor:
    """‖·‖² of each sample's gradient: (n, *normalized_shape) -> (n,)."""
    return per_sample.square().flatten(1).sum(1)


def per_sample_weight_grad_norms_squared(
    delta: torch.Tensor, a_prev: torch.Tensor, normalized_shape: tuple[int, ...], eps: float
) -> torch.Tensor:
    """‖Σ_t g_n,t ⊙ x̃_n,t‖², shape (n,). The gradient is no larger than g, so it is formed."""
    return _norms_squared(per_sample_weight_grads(delta, a_prev, normalized_shape, eps))


def per_sample_bias_grad_norms_squared(delta: torch.Tensor, normalized_shape: tuple[int, ...]) -> torch.Tensor:
    """‖Σ_t g_n,t‖², shape (n,)."""
    middle = _middle_dims(delta, normalized_shape)
    return _norms_squared(delta.sum(middle) if middle else delta)


class LayerNormPerSample:
    """A layer normalisation's per-sample rule (torchbp.per_sample): from a call's a_prev and g = ∂J/∂a, each
    parameter's per-sample gradients (weight: Σ_t g_n,t ⊙ x̃_n,t; bias: Σ_t g_n,t), or their squared norms summed."""

    def grads(
        self, module: LayerNorm, a_prev: torch.Tensor, delta: torch.Tensor, out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        grads = {}
        if module.weight is not None and module.weight.requires_grad:
            grads["weight"] = per_sample_weight_grads(
                delta, a_prev, module.normalized_shape, module.eps, out=out.get("weight")
            )
        if module.bias is not None and module.bias.requires_grad:
            grads["bias"] = per_sample_bias_grads(delta, module.normalized_shape, out=out.get("bias"))
        return grads

    def norms_squared(self, module: LayerNorm, a_prev: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device)
        if module.weight is not None and module.weight.requires_grad:
            total = total + per_sample_weight_grad_norms_squared(delta, a_prev, module.normalized_shape, module.eps)
        if module.bias is not None and module.bias.requires_grad:
            total = total + per_sample_bias_grad_norms_squared(delta, module.normalized_shape)
        return total


register(Layer(torch.nn.LayerNorm, LayerNorm, LayerNormFunction, layer_norm, per_sample=LayerNormPerSample()))
