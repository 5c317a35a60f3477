"""The squared-error loss and its hand-derived backward."""

from __future__ import annotations

import torch

from torchbp.functions.base import HandDerivedFunction, products_in_place
from torchbp.functions.shortcuts import mse_loss_of_equal_shapes
from torchbp.functions.validation import check_loss, check_reduction


class MSELossFunction(HandDerivedFunction):
    r"""ℓ = reduce((ŷ − y)²) over every element, with the backward derived by hand.

    reduce is a mean over the N elements ("mean"), a sum ("sum") or nothing
    ("none"). Given g = ∂J/∂ℓ:

    - ∂J/∂ŷ = (ŷ − y) · 2/N ⊙ g   with N = 1 for "sum" and "none"
    - ∂J/∂y = −∂J/∂ŷ

    The factors are multiplied in the order native torch uses, so in float32
    and float64 the two agree to the last bit (float16 and bfloat16 to rounding).

    The derivation's cost J = ½ Σ (y − ŷ)² is ``0.5 * mse_loss(ŷ, y, reduction="sum")``,
    whose gradient is the familiar ŷ − y.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        check_reduction(reduction)
        # Floating point, one dtype and device, and one shape: no silent broadcast of the target.
        check_loss("mse_loss", input, target)
        return mse_loss_of_equal_shapes(input, target, reduction)  # F.mse_loss, less its broadcast

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        y_hat, y, reduction = inputs
        ctx.save_for_backward(y_hat, y)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        y_hat, y = ctx.saved_tensors
        need_y_hat, need_y, _ = ctx.needs_input_grad
        return (*mse_loss_backward(g, y_hat, y, ctx.reduction, need_y_hat, need_y), None)


def mse_loss_backward(
    g: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, reduction: str, need_y_hat: bool, need_y: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂ℓ, the gradients (∂J/∂ŷ, ∂J/∂y), each only when needed."""
    if not (need_y_hat or need_y):
        return None, None
    # max(·, 1): an empty batch has an empty gradient, and 2/0 must not stop it.
    N = max(y_hat.numel(), 1) if reduction == "mean" else 1
    if products_in_place(g):  # the same products, into one buffer
        grad_y_hat = (y_hat - y).mul_(2 / N).mul_(g)
    else:
        grad_y_hat = (y_hat - y) * (2 / N) * g  # (ŷ − y) · 2/N ⊙ g
    return grad_y_hat if need_y_hat else None, -grad_y_hat if need_y else None
