"""The linear layer z = a_prev Wᵀ + b and its hand-derived backward.

Index letters, as in the derivation: n runs over samples (every leading
dimension of the input counts as one more sample axis), i over in_features,
o over out_features. δ = ∂J/∂z is the upstream gradient, shape (*, o).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchbp.functions.validation import check_floating_and_matching, check_linear_shapes


class LinearFunction(torch.autograd.Function):
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
        check_floating_and_matching("linear", input=input, weight=weight, bias=bias)
        check_linear_shapes(input, weight, bias)
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a_prev, W, _ = inputs
        need_a_prev, need_W, _ = ctx.needs_input_grad
        # δ W reads W, δᵀ a_prev reads a_prev: keep only what will be read.
        ctx.save_for_backward(a_prev if need_W else None, W if need_a_prev else None)

    @staticmethod
    def backward(ctx, delta: torch.Tensor):
        a_prev, W = ctx.saved_tensors
        need_a_prev, need_W, need_b = ctx.needs_input_grad
        grad_a_prev = grad_W = grad_b = None

        if need_a_prev:
            grad_a_prev = delta @ W  # δ W: (*, o) @ (o, i) -> (*, i)
        if need_W or need_b:
            delta_n = delta.reshape(-1, delta.shape[-1])  # every leading dimension is a sample: (n, o)
        if need_W:
            a_prev_n = a_prev.reshape(-1, a_prev.shape[-1])  # (n, i)
            grad_W = delta_n.T @ a_prev_n  # δᵀ a_prev = Σ_n δ_n a_prev,nᵀ: (o, i)
        if need_b:
            grad_b = delta_n.sum(0)  # Σ_n δ_n: (o,)
        return grad_a_prev, grad_W, grad_b
