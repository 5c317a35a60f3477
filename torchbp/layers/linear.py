"""The linear layer z = a_prev Wᵀ + b: its Function, checks, functional form, module, fused step and
per-sample rule.

Index letters, as in the derivation: n runs over samples (every leading
dimension of the input counts as one more sample axis), i over in_features,
o over out_features. δ = ∂J/∂z is the upstream gradient, shape (*, o).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from torchbp import autocast
from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.table import Layer, Step, register
from torchbp.validation import (
    FLOATING,
    ShapeError,
    shape_text,
    validate_bias_shape,
    validate_floating_and_matching,
)

# -- input checks ----------------------------------------------------------------------


def validate_linear_shapes(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """input is (*, in_features), weight is (out_features, in_features), bias is (out_features,)."""
    if weight.dim() != 2:
        raise ShapeError(f"linear: expected weight of shape (out_features, in_features), got {shape_text(weight)}")
    in_features = weight.shape[1]
    if input.dim() == 0 or input.shape[-1] != in_features:
        raise ShapeError(
            f"linear: expected input of shape (*, {in_features}) to match weight {shape_text(weight)}, "
            f"got input {shape_text(input)}"
        )
    validate_bias_shape("linear", bias, weight)


def validate_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Floating point, one dtype and device, and shapes (*, i), (o, i) and (o,)."""
    if (  # the common case, decided in a few comparisons; the checks above explain the rest
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
            or (
                isinstance(bias, torch.Tensor)
                and bias.dtype == input.dtype
                and bias.device == input.device
                and bias.shape == weight.shape[:1]
            )
        )
    ):
        return
    validate_floating_and_matching("linear", input=input, weight=weight, bias=bias)
    validate_linear_shapes(input, weight, bias)


# -- the backward ----------------------------------------------------------------------


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(*, f) -> (n, f), n the product of the leading sizes (explicit, so that f = 0 works)."""
    return t if t.dim() == 2 else t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def linear_backward(
    delta: torch.Tensor,
    a_prev: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    need_a_prev: bool,
    need_W: bool,
    need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Given δ = ∂J/∂z, the gradients (∂J/∂a_prev, ∂J/∂W, ∂J/∂b), each only when needed (W is read
    only for ∂J/∂a_prev and a_prev only for ∂J/∂W, so either may be None where it is not; no gradient
    reads b, which is taken so that the fused chain passes the layer's arguments as they come)."""
    grad_a_prev = grad_W = grad_b = None
    if delta.dim() > 2 and need_a_prev and (need_W or need_b):
        delta = delta.contiguous()  # a strided δ (a transposed output's) copied once, not once for each product
    if need_a_prev:
        grad_a_prev = delta @ W  # δ W: (*, o) @ (o, i) -> (*, i)
    if need_W or need_b:
        delta_n = _rows(delta)  # every leading dimension is a sample: (n, o)
    if need_W:
        grad_W = delta_n.T @ _rows(a_prev)  # δᵀ a_prev = Σ_n δ_n a_prev,nᵀ: (o, i)
    if need_b:
        grad_b = delta_n.sum(0)  # Σ_n δ_n: (o,)
    return grad_a_prev, grad_W, grad_b


class LinearFunction(HandDerivedFunction):
    r"""z = a_prev Wᵀ + b, with the backward derived by hand.

    Given δ = ∂J/∂z:

    - ∂J/∂a_prev = δ W                                  (then ⊙ σ'(z_prev) in the sigmoid before it)
    - ∂J/∂W      = δᵀ a_prev = Σ_n δ_n a_prev,nᵀ        (the sum over every leading dimension)
    - ∂J/∂b      = Σ_n δ_n

    Each term is computed only when ``ctx.needs_input_grad`` asks for it, and
    only the tensors those terms read are saved. The backward is made of
    differentiable torch operations, so it can itself be differentiated
    (double backward, Hessian-vector products).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        validate_linear(input, weight, bias)
        z = F.linear(input, weight, bias)
        # With a bias and more than two dimensions, F.linear returns a view of its 2-d product. A custom
        # Function's output that is a view refuses in-place writes (a ReLU(inplace=True) after the layer);
        # native linear's does not. The same values, as a tensor that is not a view:
        return z if z._base is None else torch.ops.aten._unsafe_view(z, z.shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        a_prev, W, _ = inputs
        need_a_prev, need_W, _ = ctx.needs_input_grad
        # δ W reads W, δᵀ a_prev reads a_prev: keep only what will be read.
        ctx.save_for_backward(a_prev if need_W else None, W if need_a_prev else None)

    @staticmethod
    def backward(ctx: Any, delta: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a_prev, W = ctx.saved_tensors
        return linear_backward(delta, a_prev, W, None, *ctx.needs_input_grad)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """z = input weightᵀ + bias, as torch.nn.functional.linear, backward by LinearFunction.

    Under ``torch.autocast`` it runs in the autocast dtype, as the native one does.
    """
    if autocast.any_enabled() and isinstance(input, torch.Tensor):  # one cheap call when autocast is off
        input, weight, bias = autocast.cast_as_autocast_would(autocast.LOWER_PRECISION, input, weight, bias)
    return LinearFunction.apply(input, weight, bias)  # type: ignore[no-any-return]


class Linear(HandDerivedModule, torch.nn.Linear):
    r"""torch.nn.Linear whose backward is :class:`LinearFunction`.

    .. math:: z = a_{prev} W^\top + b

    Args:
        in_features, out_features, bias, device, dtype: as torch.nn.Linear.

    Shape:
        - Input: :math:`(*, H_{in})`, any number of leading dimensions, N = 0 included.
        - Output: :math:`(*, H_{out})`.

    Examples::

        >>> m = torchbp.nn.Linear(2, 3)
        >>> m(torch.randn(5, 2)).shape
        torch.Size([5, 3])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


# -- the fused step --------------------------------------------------------------------


def weight_and_bias(module: torch.nn.Module) -> tuple[Any, ...] | None:
    """A Linear's arguments in the fused chain; None where weight or bias was reassigned as a plain attribute."""
    parameters = module._parameters  # module.weight would pass through Module.__getattr__
    try:
        return parameters["weight"], parameters["bias"]
    except KeyError:
        return None


# -- the per-sample view ---------------------------------------------------------------
# ∂J/∂W = Σ_n δ_n a_prev,nᵀ: the backward above sums over n with one matrix product.
# Kept apart, the terms are each sample's own gradient. Leading dimensions after
# the first (n) are summed within a sample: (n, t, o) and (n, t, i) give (n, o, i).


def _rows_per_sample(t: torch.Tensor) -> torch.Tensor:
    """(n, *, f) -> (n, t, f) with t the product of the middle sizes (an explicit t keeps n = 0 working)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:-1]), t.shape[-1])


def per_sample_weight_grads(delta: torch.Tensor, a_prev: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """δ_n a_prev,nᵀ for every sample n: shape (n, o, i), summed over any middle dimensions.

    ``out``, when given, receives the result: reusing one buffer across calls
    spares the operating system from handing out (and zeroing) fresh memory,
    which for large layers costs more than the arithmetic.
    """
    if delta.dim() == 2:
        return torch.mul(delta[:, :, None], a_prev[:, None, :], out=out)  # outer products
    delta_n, a_prev_n = _rows_per_sample(delta), _rows_per_sample(a_prev)  # (n, t, o), (n, t, i)
    return torch.matmul(delta_n.transpose(1, 2), a_prev_n, out=out)  # Σ_t δ_n,t a_prev,n,tᵀ


def per_sample_bias_grads(delta: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """δ_n for every sample n: shape (n, o), summed over any middle dimensions."""
    return torch.sum(_rows_per_sample(delta), dim=1, out=out)


def per_sample_weight_grad_norms_squared(delta: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """‖δ_n a_prev,nᵀ‖², shape (n,), without forming the (n, o, i) gradients where that is cheaper.

    For one row per sample, ‖δ_n a_nᵀ‖² = ‖δ_n‖² ‖a_n‖². For t rows per sample,
    ‖Σ_t δ_t a_tᵀ‖² = Σ_{t,t′} (δ_t · δ_t′)(a_t · a_t′), two (t × t) Gram matrices,
    cheaper than the gradient itself while t (o + i) < o i.
    """
    if delta.dim() == 2:
        return delta.square().sum(1) * a_prev.square().sum(1)
    delta_n, a_prev_n = _rows_per_sample(delta), _rows_per_sample(a_prev)
    t, o, i = delta_n.shape[1], delta_n.shape[2], a_prev_n.shape[2]
    if t * (o + i) < o * i:
        gram_delta = delta_n @ delta_n.transpose(1, 2)  # (n, t, t)
        gram_a = a_prev_n @ a_prev_n.transpose(1, 2)
        return (gram_delta * gram_a).sum((1, 2))
    return per_sample_weight_grads(delta, a_prev).square().sum((1, 2))


class LinearPerSample:
    """A linear layer's per-sample rule (torchbp.per_sample): from a call's a_prev and δ, each parameter's
    per-sample gradients (weight: δ_n a_prev,nᵀ; bias: δ_n), or their squared norms summed."""

    def grads(
        self, module: Linear, a_prev: torch.Tensor, delta: torch.Tensor, out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        grads = {}
        if module.weight.requires_grad:
            grads["weight"] = per_sample_weight_grads(delta, a_prev, out=out.get("weight"))
        if module.bias is not None and module.bias.requires_grad:
            grads["bias"] = per_sample_bias_grads(delta, out=out.get("bias"))
        return grads

    def norms_squared(self, module: Linear, a_prev: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device)
        if module.weight.requires_grad:
            total = total + per_sample_weight_grad_norms_squared(delta, a_prev)
        if module.bias is not None and module.bias.requires_grad:
            total = total + per_sample_bias_grads(delta).square().sum(1)
        return total


register(
    Layer(
        torch.nn.Linear,
        Linear,
        LinearFunction,
        linear,
        step=Step("linear", LinearFunction.forward, linear_backward, reads="input", arity=2, arguments=weight_and_bias),
        per_sample=LinearPerSample(),
    )
)
