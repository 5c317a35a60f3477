"""Drop-in modules: torch.nn's layers with hand-derived backward passes, and the table of them.

Each subclasses its native module and changes nothing but ``forward``: the
constructor, initialization, parameters, state_dict keys and extra_repr are
the native module's own, so ``isinstance(m, torch.nn.Linear)`` holds and
state_dicts move freely between the two.

``LAYERS``, at the end, is the one table of the hand-derived layers: each
native class, its torchbp class, its step in the fused chain and its
per-sample rule. ``convert``, ``to_native``, ``fuse``, ``check_model``, the
lockstep trainer and per-sample gradients all read it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from torch.nn.modules import module as module_hooks

from torchbp import functional
from torchbp.autocast import autocast_active
from torchbp.functions import SequentialFunction, conv2d, layer_norm, linear
from torchbp.functions.sequential import LINEAR, MSE_LOSS, RELU, SCALE, SIGMOID, TANH
from torchbp.functions.shortcuts import any_autocast_enabled
from torchbp.functions.validation import check_scale

class HandDerived:
    """Marks a module as torchbp's: its repr reads ``torchbp.Linear(...)``."""

    def _get_name(self) -> str:
        return f"torchbp.{type(self).__name__}"


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


class Sigmoid(HandDerived, torch.nn.Sigmoid):
    r"""torch.nn.Sigmoid whose backward is :class:`torchbp.functions.SigmoidFunction`.

    .. math:: a = \sigma(z), \qquad \sigma'(z) = \sigma(z)(1 - \sigma(z))

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.sigmoid(input)


class Tanh(HandDerived, torch.nn.Tanh):
    r"""torch.nn.Tanh whose backward is :class:`torchbp.functions.TanhFunction`.

    .. math:: a = \tanh(z), \qquad \tanh'(z) = 1 - a^2

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.tanh(input)


class ReLU(HandDerived, torch.nn.ReLU):
    r"""torch.nn.ReLU whose backward is :class:`torchbp.functions.ReLUFunction`.

    .. math:: a = \max(z, 0), \qquad \partial a / \partial z = 1[z > 0]

    Args:
        inplace: as torch.nn.ReLU's: the result is written into the input, and the gradient still flows
            through ReLUFunction.

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.relu(input, self.inplace)


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


class Conv2d(HandDerived, torch.nn.Conv2d):
    r"""torch.nn.Conv2d whose backward is :class:`torchbp.functions.Conv2dFunction`.

    .. math:: z = W \star a_{prev} + b

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode, device, dtype:
            as torch.nn.Conv2d. groups: 1 only (others raise NotImplementedError at the first call).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)` or :math:`(C_{in}, H, W)`; Output: :math:`(N, C_{out}, H_{out}, W_{out})`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as native: pad in the mode, then convolve with no padding
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return functional.conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return functional.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LayerNorm(HandDerived, torch.nn.LayerNorm):
    r"""torch.nn.LayerNorm whose backward is :class:`torchbp.functions.LayerNormFunction`.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \gamma + \beta

    Args:
        normalized_shape, eps, elementwise_affine, bias, device, dtype: as torch.nn.LayerNorm.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; Output: the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class CrossEntropyLoss(HandDerived, torch.nn.CrossEntropyLoss):
    r"""torch.nn.CrossEntropyLoss whose backward is :class:`torchbp.functions.CrossEntropyFunction`.

    .. math:: \ell_n = -\sum_c q_{nc} \log \operatorname{softmax}(z_n)_c, \qquad
              \partial \ell_n / \partial z_n = \operatorname{softmax}(z_n) \textstyle\sum_c q_{nc} - q_n

    Args:
        ignore_index, reduction, label_smoothing, size_average, reduce: as torch.nn.CrossEntropyLoss.
        weight: refused (NotImplementedError at the first call) unless None.

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, \dots)` logits.
        - Target: class indices of the input's shape without C, or class probabilities of the input's shape.
        - Output: a scalar, or the target's shape without C with ``reduction="none"``.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                                        reduction=self.reduction, label_smoothing=self.label_smoothing)


class Sequential(HandDerived, torch.nn.Sequential):
    r"""torch.nn.Sequential that runs a chain of torchbp Linear layers and activations as one Function.

    The whole chain's backward is :class:`torchbp.functions.SequentialFunction`:
    the derivation run layer by layer as one algorithm, with one autograd node
    instead of one per layer, which is what small networks spend their time on.
    Children, parameters and state_dict keys are the native container's.

    It falls back to running its children one by one (the per-layer path)
    whenever the fused path would behave differently: a child that is not a
    torchbp Linear or activation, a hook on a child (``torchbp.PerSampleGradients``
    registers one on each Linear) or a global module hook, autocast, or an
    input that is not a tensor. Made by :func:`torchbp.fuse`.
    """

    def forward(self, input):
        chain = self._fused_chain(input)
        if chain is None:
            return super().forward(input)
        kinds, args = chain
        return SequentialFunction.apply(input, tuple(kinds), *args)[-1]

    def _fused_chain(self, input):
        """The kinds and args of SequentialFunction for ``input`` (two lists), or None where the chain
        cannot be fused. Walked on every call: hooks, layers and parameters may change between calls."""
        if not isinstance(input, torch.Tensor) or _global_hooks():
            return None
        if any_autocast_enabled() and autocast_active(input):  # the per-layer path makes autocast's casts
            return None
        kinds, args = [], []
        for layer in self._modules.values():
            kind = _FUSABLE.get(type(layer))
            if kind is None or _runs_other_code(layer):  # the fused chain would not run it
                return None
            kinds.append(kind)
            if kind == LINEAR:
                parameters = layer._parameters  # layer.weight would pass through Module.__getattr__
                if "weight" not in parameters or "bias" not in parameters:  # reassigned as a plain attribute
                    return None
                args += (parameters["weight"], parameters["bias"])
        return (kinds, args) if kinds else None


class FusedLoss(HandDerived, torch.nn.Module):
    r"""``scale * loss_fn(model(input), target)``, as one Function where the chain and the loss allow.

    When ``model`` is a :class:`torchbp.nn.Sequential` of Linear layers and activations
    and ``loss_fn`` a torchbp MSELoss (any reduction), the network, the
    loss and the constant ``scale`` run as one :class:`torchbp.functions.SequentialFunction`
    node whose last steps are the squared error and the scale: for the smallest
    networks, where every autograd node costs more than its arithmetic, torchbp's
    fastest path. Elsewhere, and under the fused chain's own fallbacks (hooks,
    autocast, a non-tensor input), it computes ``scale * loss_fn(model(input), target)``
    (without the product when ``scale`` is 1). Made by :func:`torchbp.fuse_loss`.

    Args:
        model: the network; its parameters are this module's (state_dict keys ``model.*``).
        loss_fn: the loss, called as ``loss_fn(output, target)``.
        scale: a constant factor of the loss, such as the ½ of J = ½ Σ (y − ŷ)². Default: 1.

    Shape:
        - Input: as ``model``'s. Target: the output's shape (no broadcasting).
        - Output: as ``loss_fn``'s.

    Examples::

        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
        >>> half_sse = torchbp.fuse_loss(net, torch.nn.MSELoss(reduction="sum"), scale=0.5)
        >>> half_sse(torch.randn(5, 2), torch.randn(5, 1)).backward()
    """

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, scale: float = 1.0):
        super().__init__()
        check_scale(scale)
        self.model = model
        self.loss_fn = loss_fn
        self.scale = scale

    def forward(self, input, target):
        chain = self._fused_chain(input, target)
        if chain is None:
            loss = self.loss_fn(self.model(input), target)
            return loss if self.scale == 1 else self.scale * loss
        kinds, args = chain
        return SequentialFunction.apply(input, tuple(kinds), *args)[-1]

    def _fused_chain(self, input, target):
        model, loss_fn = self._modules["model"], self._modules["loss_fn"]
        if (
            type(loss_fn) not in _FUSABLE_LOSSES
            or type(model) is not Sequential
            or not isinstance(target, torch.Tensor)
            or _runs_other_code(model)
            or _runs_other_code(loss_fn)
        ):
            return None
        chain = model._fused_chain(input)
        if chain is None:
            return None
        kinds, args = chain
        kinds.append(MSE_LOSS)
        args += (target, loss_fn.reduction)
        if self.scale != 1:
            kinds.append(SCALE)
            args.append(self.scale)
        return kinds, args

    def extra_repr(self) -> str:
        return "" if self.scale == 1 else f"scale={self.scale}"


class Layer(NamedTuple):
    """One hand-derived layer, all torchbp knows of it: an entry of ``LAYERS``."""

    native: type[torch.nn.Module]  # the torch.nn class it replaces
    hand: type[torch.nn.Module]  # its torchbp class: a subclass of native with its own forward
    step: str | None = None  # its step in the fused chain (torchbp.fuse), if it has one
    # Its per-sample rule (torchbp.per_sample), if it has parameters: an object whose grads(module, a_prev, δ, out)
    # gives {name: (N, *shape)} and norms_squared(module, a_prev, δ) the (N,) squared norms, from one call's input
    # a_prev and upstream gradient δ; it lives in the layer's file in torchbp/functions.
    per_sample: object | None = None
    # Which instances it can run, where not all: torchbp.convert leaves the others native.
    runs: Callable[[torch.nn.Module], bool] | None = None


LAYERS: tuple[Layer, ...] = (
    Layer(torch.nn.Linear, Linear, LINEAR, linear.PER_SAMPLE),
    Layer(torch.nn.Sigmoid, Sigmoid, SIGMOID),
    Layer(torch.nn.Tanh, Tanh, TANH),
    Layer(torch.nn.ReLU, ReLU, RELU),
    Layer(torch.nn.MSELoss, MSELoss, MSE_LOSS),
    Layer(torch.nn.CrossEntropyLoss, CrossEntropyLoss, runs=lambda loss: loss.weight is None),  # no class weights
    Layer(torch.nn.LayerNorm, LayerNorm, per_sample=layer_norm.PER_SAMPLE),
    Layer(torch.nn.Conv2d, Conv2d, per_sample=conv2d.PER_SAMPLE, runs=lambda conv: conv.groups == 1),
)

HAND_DERIVED = {layer.native: layer.hand for layer in LAYERS}  # what torchbp.convert swaps
RUNS = {layer.native: layer.runs for layer in LAYERS if layer.runs is not None}  # where only some instances


def runs_hand_derived(module: torch.nn.Module) -> bool:
    """Is ``module`` a torchbp layer, or a native one torchbp.convert would replace?"""
    if type(module) in _HAND_CLASSES:
        return True
    runs = RUNS.get(type(module))
    return type(module) in HAND_DERIVED and (runs is None or runs(module))


_HAND_CLASSES = {layer.hand for layer in LAYERS}
FUSED = {torch.nn.Sequential: Sequential}  # containers torchbp.fuse replaces as well
_FUSABLE = {layer.hand: layer.step for layer in LAYERS if layer.step not in (None, MSE_LOSS)}
# The losses a fused chain ends in. A native MSELoss broadcasts its target, so it runs as itself
# (torchbp.fuse_loss converts it).
_FUSABLE_LOSSES = {layer.hand for layer in LAYERS if layer.step == MSE_LOSS}


def _runs_other_code(module: torch.nn.Module) -> bool:
    """Would calling ``module`` run more than its class's forward: a hook, or a forward set on the instance
    (as libraries that wrap layers do)?"""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or "forward" in module.__dict__
    )


def _global_hooks() -> bool:
    return bool(
        module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )
