"""The tanh activation a = tanh(z): its Function, functional form and module."""

from __future__ import annotations

import torch

from torchbp.hand_derived import ElementwiseFunction, HandDerivedModule
from torchbp.table import Layer, register
from torchbp.validation import validate_floating


class TanhFunction(ElementwiseFunction):
    r"""a = tanh(z), with the backward derived by hand: ∂J/∂z = g ⊙ tanh'(z), tanh'(z) = 1 − tanh²(z) = 1 − a².

    From the saved output a only, as for the sigmoid. 1 − a a is taken with one
    rounding (addcmul: 1 + (−1) a a), as native torch's fused multiply-add takes it,
    then times g: on the CPU in float32 and float64 the same bits as native torch.
    """

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:  # z
        validate_floating("tanh", input)
        return torch.tanh(input)

    @staticmethod
    def derivative(a: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(torch.ones_like(a), a, a, value=-1)  # 1 − a²


def tanh(input: torch.Tensor) -> torch.Tensor:
    """tanh(input), as torch.tanh, backward by TanhFunction."""
    return TanhFunction.apply(input)  # type: ignore[no-any-return]


class Tanh(HandDerivedModule, torch.nn.Tanh):
    r"""torch.nn.Tanh whose backward is :class:`TanhFunction`.

    .. math:: a = \tanh(z), \qquad \tanh'(z) = 1 - a^2

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tanh(input)


register(Layer(torch.nn.Tanh, Tanh, TanhFunction, tanh, step=TanhFunction.fused_step("tanh")))
