"""Drop-in modules: torch.nn's Linear, Sigmoid and MSELoss with hand-derived backward passes.

Each subclasses its native module and changes nothing but ``forward``: the
constructor, initialization, parameters, state_dict keys and extra_repr are
the native module's own, so ``isinstance(m, torch.nn.Linear)`` holds and
state_dicts move freely between the two. ``HAND_DERIVED`` maps each native
class to its torchbp version; ``torchbp.convert`` reads it.
"""

from __future__ import annotations

import torch

from torchbp import functional

HAND_DERIVED: dict[type[torch.nn.Module], type[torch.nn.Module]] = {}


def hand_derived_version_of(native: type[torch.nn.Module]):
    """Register the decorated class as the torchbp version of ``native``."""

    def register(cls):
        HAND_DERIVED[native] = cls
        return cls

    return register


class HandDerived:
    """Marks a module as torchbp's: its repr reads ``torchbp.Linear(...)``."""

    def _get_name(self) -> str:
        return f"torchbp.{type(self).__name__}"


@hand_derived_version_of(torch.nn.Linear)
class Linear(HandDerived, torch.nn.Linear):
    r"""torch.nn.Linear whose backward is :class:`torchbp.functions.LinearFunction`.

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
        return functional.linear(input, self.weight, self.bias)


@hand_derived_version_of(torch.nn.Sigmoid)
class Sigmoid(HandDerived, torch.nn.Sigmoid):
    r"""torch.nn.Sigmoid whose backward is :class:`torchbp.functions.SigmoidFunction`.

    .. math:: a = \sigma(z), \qquad \sigma'(z) = \sigma(z)(1 - \sigma(z))

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.sigmoid(input)


@hand_derived_version_of(torch.nn.MSELoss)
class MSELoss(HandDerived, torch.nn.MSELoss):
    r"""torch.nn.MSELoss whose backward is :class:`torchbp.functions.MSELossFunction`.

    .. math:: \ell = \operatorname{reduce}((\hat y - y)^2)

    Args:
        size_average, reduce, reduction: as torch.nn.MSELoss.

    Shape:
        - Input and target: :math:`(*)`, one shape for both (no broadcasting).
        - Output: a scalar, or :math:`(*)` with ``reduction="none"``.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return functional.mse_loss(input, target, reduction=self.reduction)
