"""The sigmoid activation a = σ(z) and its hand-derived backward."""

from __future__ import annotations

import torch

from torchbp.functions.validation import check_floating_and_matching


def sigmoid_derivative(a: torch.Tensor) -> torch.Tensor:
    """σ'(z) = σ(z)(1 − σ(z)), computed from the saved output a = σ(z), never by recomputing σ."""
    return a * (1 - a)


class SigmoidFunction(torch.autograd.Function):
    r"""a = σ(z) = 1 / (1 + e^(−z)), with the backward derived by hand.

    Given g = ∂J/∂a:

    - ∂J/∂z = g ⊙ σ'(z) = g ⊙ a ⊙ (1 − a)

    Composed with the linear layer after it, this is the derivation's
    δ_prev = (δ W) ⊙ σ'(z_prev). Only the output a is saved.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        check_floating_and_matching("sigmoid", input=input)
        return torch.sigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return grad_output * sigmoid_derivative(a)  # g ⊙ σ'(z)
