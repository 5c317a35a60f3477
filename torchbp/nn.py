"""Drop-in modules: torch.nn's Linear, Sigmoid and MSELoss with hand-derived backward passes.

Each subclasses its native module and changes nothing but ``forward``: the
constructor, initialization, parameters, state_dict keys and extra_repr are
the native module's own, so ``isinstance(m, torch.nn.Linear)`` holds and
state_dicts move freely between the two. ``HAND_DERIVED`` maps each native
class to its torchbp version; ``torchbp.convert`` reads it.
"""

from __future__ import annotations

import torch

from torch.nn.modules import module as module_hooks

from torchbp import functional
from torchbp.autocast import autocast_active
from torchbp.functions import SequentialFunction
from torchbp.functions.sequential import LINEAR, SIGMOID

HAND_DERIVED: dict[type[torch.nn.Module], type[torch.nn.Module]] = {}
FUSED: dict[type[torch.nn.Module], type[torch.nn.Module]] = {}  # containers torchbp.fuse replaces


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


class Sequential(HandDerived, torch.nn.Sequential):
    r"""torch.nn.Sequential that runs a chain of torchbp Linear and Sigmoid layers as one Function.

    The whole chain's backward is :class:`torchbp.functions.SequentialFunction`:
    the derivation run layer by layer as one algorithm, with one autograd node
    instead of one per layer, which is what small networks spend their time on.
    Children, parameters and state_dict keys are the native container's.

    It falls back to running its children one by one (the per-layer path)
    whenever the fused path would behave differently: a child that is not a
    torchbp Linear or Sigmoid, a hook on a child (``torchbp.PerSampleGradients``
    registers one on each Linear) or a global module hook, autocast, or an
    input that is not a tensor. Made by :func:`torchbp.fuse`.
    """

    def forward(self, input):
        plan = self._fused_plan(input)
        if plan is None:
            return super().forward(input)
        kinds, params = plan
        return SequentialFunction.apply(input, kinds, *params)[-1]

    def _fused_plan(self, input):
        if not isinstance(input, torch.Tensor) or len(self) == 0 or _global_hooks() or autocast_active(input):
            return None
        kinds, params = [], []
        for layer in self._modules.values():
            if layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks:
                return None
            kind = _FUSABLE.get(type(layer))
            if kind is None:
                return None
            kinds.append(kind)
            if kind == LINEAR:
                params += [layer.weight, layer.bias]
        return tuple(kinds), params


_FUSABLE = {Linear: LINEAR, Sigmoid: SIGMOID}
FUSED[torch.nn.Sequential] = Sequential


def _global_hooks() -> bool:
    return bool(
        module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )
