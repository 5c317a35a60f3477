"""The tanh activation a = tanh(z) and its hand-derived backward."""

from __future__ import annotations

import torch

from torchbp.functions.base import HandDerivedFunction, products_in_place
from torchbp.functions.validation import check_activation


def tanh_backward(grad_output: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """∂J/∂z = g ⊙ (1 − a²) from the output a = tanh(z).

    1 − a a is taken with one rounding (addcmul: 1 + (−1) a a), as native torch's
    fused multiply-add takes it, then times g; into one buffer in place where it may.
    """
    if products_in_place(grad_output):
        return torch.ones_like(a).addcmul_(a, a, value=-1).mul_(grad_output)
    return grad_output * torch.addcmul(torch.ones_like(a), a, a, value=-1)


class TanhFunction(HandDerivedFunction):
    r"""a = tanh(z), with the backward derived by hand.

    Given g = ∂J/∂a:

    - ∂J/∂z = g ⊙ tanh'(z),  tanh'(z) = 1 − tanh²(z) = 1 − a²

    From the saved output a only, as for the sigmoid; on the CPU in float32
    and float64 the same bits as native torch.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        check_activation("tanh", input)
        return torch.tanh(input)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return tanh_backward(grad_output, a)
