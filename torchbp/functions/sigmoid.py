"""The sigmoid activation a = σ(z) and its hand-derived backward."""

from __future__ import annotations

import torch

from torchbp.functions.base import HandDerivedFunction, products_in_place
from torchbp.functions.validation import check_activation


def sigmoid_backward(grad_output: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """∂J/∂z = g ⊙ σ'(z), with σ'(z) = (1 − a) a from the output a = σ(z).

    Computed as g (1 − a) a, left to right. Where it may (see
    ``products_in_place``), the products go into one buffer in place, so the
    backward holds one temporary of a's size, as native torch's does.
    """
    if products_in_place(grad_output):
        return torch.rsub(a, 1).mul_(grad_output).mul_(a)  # 1 − a, less __rsub__'s Python; (1 − a) g = g (1 − a)
    return grad_output * (1 - a) * a


class SigmoidFunction(HandDerivedFunction):
    r"""a = σ(z) = 1 / (1 + e^(−z)), with the backward derived by hand.

    Given g = ∂J/∂a:

    - ∂J/∂z = g ⊙ σ'(z),  σ'(z) = σ(z)(1 − σ(z)) = a (1 − a)

    σ' comes from the saved output a, never from recomputing σ; only a is
    saved. Composed with the linear layer after it, this is the derivation's
    δ_prev = (δ W) ⊙ σ'(z_prev). The product is taken as g (1 − a) a, the
    order native torch multiplies in, so in float32 and float64 the two agree
    to the last bit (native computes float16 and bfloat16 in float32 and rounds
    once; there they agree to rounding).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        check_activation("sigmoid", input)
        return torch.sigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return sigmoid_backward(grad_output, a)
