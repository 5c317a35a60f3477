"""The sigmoid activation a = σ(z) = 1 / (1 + e^(−z)): its Function, functional form and module."""

from __future__ import annotations

import torch

from torchbp.hand_derived import ElementwiseFunction, HandDerivedModule
from torchbp.table import Layer, register
from torchbp.validation import validate_floating


class SigmoidFunction(ElementwiseFunction):
    r"""a = σ(z), with the backward derived by hand: ∂J/∂z = g ⊙ σ'(z), σ'(z) = σ(z)(1 − σ(z)) = (1 − a) a.

    σ' comes from the saved output a, never from recomputing σ. Composed with the
    linear layer after it, this is the derivation's δ_prev = (δ W) ⊙ σ'(z_prev). The
    product is taken as g (1 − a) a, the order native torch multiplies in, so in
    float32 and float64 the two agree to the last bit (native computes float16 and
    bfloat16 in float32 and rounds once; there they agree to rounding).
    """

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:  # z
        validate_floating("sigmoid", input)
        return torch.sigmoid(input)

    @staticmethod
    def derivative(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # σ' = (1 − a) a, multiplied into g as g (1 − a) a; torch.rsub(a, 1) is 1 − a without __rsub__'s Python
        return torch.rsub(a, 1), a


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """σ(input), as torch.sigmoid, backward by SigmoidFunction."""
    return SigmoidFunction.apply(input)  # type: ignore[no-any-return]


class Sigmoid(HandDerivedModule, torch.nn.Sigmoid):
    r"""torch.nn.Sigmoid whose backward is :class:`SigmoidFunction`.

    .. math:: a = \sigma(z), \qquad \sigma'(z) = \sigma(z)(1 - \sigma(z))

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return sigmoid(input)


register(Layer(torch.nn.Sigmoid, Sigmoid, SigmoidFunction, sigmoid, step=SigmoidFunction.fused_step("sigmoid")))
