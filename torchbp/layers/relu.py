"""The rectifier a = max(z, 0): its Function, functional form and module."""

from __future__ import annotations

import torch

from torchbp.hand_derived import ElementwiseFunction, HandDerivedModule, Indicator
from torchbp.table import Layer, register
from torchbp.validation import validate_floating


class ReLUFunction(ElementwiseFunction):
    r"""a = max(z, 0), with the backward derived by hand: ∂J/∂z = g ⊙ 1[a > 0].

    The indicator comes from the saved output a (a ≥ 0, and a ≠ 0 exactly where z > 0),
    so only a is saved. At z = 0 the derivative is taken as 0, as native torch takes it;
    it is applied as a selection, so a NaN or an infinity in g where a = 0 becomes 0
    there too, and a NaN output passes g through, both as natively: the same bits as
    native torch.
    """

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:  # z
        validate_floating("relu", input)
        return torch.relu(input)

    @staticmethod
    def derivative(a: torch.Tensor) -> Indicator:
        return Indicator(nonzero=a)  # 1[a > 0]: a ≥ 0


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), as torch.nn.functional.relu, backward by ReLUFunction.

    With ``inplace=True`` the result is written back into ``input`` (a copy recorded by autograd, so
    the gradient still flows through ReLUFunction), and ``input`` is returned, as natively.
    """
    output: torch.Tensor = ReLUFunction.apply(input)
    return input.copy_(output) if inplace else output


class ReLU(HandDerivedModule, torch.nn.ReLU):
    r"""torch.nn.ReLU whose backward is :class:`ReLUFunction`.

    .. math:: a = \max(z, 0), \qquad \partial a / \partial z = 1[z > 0]

    Args:
        inplace: as torch.nn.ReLU's: the result is written into the input, and the gradient still flows
            through ReLUFunction.

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return relu(input, self.inplace)


register(Layer(torch.nn.ReLU, ReLU, ReLUFunction, relu, step=ReLUFunction.fused_step("relu")))
