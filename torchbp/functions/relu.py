"""The rectifier a = max(z, 0) and its hand-derived backward."""

from __future__ import annotations

import torch

from torchbp.functions.base import HandDerivedFunction
from torchbp.functions.validation import check_activation


def relu_backward(grad_output: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """∂J/∂z = g ⊙ 1[a > 0] from the output a = max(z, 0): g where the output is positive, 0 elsewhere.

    At z = 0 the derivative is taken as 0, as native torch takes it; a NaN or an
    infinity in g where a ≤ 0 becomes 0 there too, as natively (a mask, not a product).
    """
    return grad_output.masked_fill(a <= 0, 0)


class ReLUFunction(HandDerivedFunction):
    r"""a = max(z, 0), with the backward derived by hand.

    Given g = ∂J/∂a:

    - ∂J/∂z = g ⊙ 1[a > 0]

    The mask comes from the saved output a (a > 0 exactly where z > 0), so only a
    is saved; the same bits as native torch.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        check_activation("relu", input)
        return torch.relu(input)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return relu_backward(grad_output, a)
