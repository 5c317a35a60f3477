"""Swap a model's layers between torch.nn and torchbp, keeping every parameter."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from torchbp.layers import LAYERS, hand_class
from torchbp.speed.fused import FusedLoss, Sequential

_NATIVE = {layer.hand: layer.native for layer in LAYERS}
_NATIVE[Sequential] = torch.nn.Sequential


def convert(module: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """Return ``module`` with every layer of the table (``torchbp.nn.LAYERS``: Linear, Conv2d, Embedding,
    LayerNorm, Sigmoid, Tanh, ReLU, GELU, Softmax, LogSoftmax, Dropout, MultiheadAttention, MSELoss,
    CrossEntropyLoss), at any depth (``module`` itself included), replaced by its torchbp version; an instance
    torchbp cannot run (a Conv2d with groups, a CrossEntropyLoss with class weights, an Embedding with max_norm,
    a MultiheadAttention with dropout) stays native.

    The replacement holds the same parameters, buffers and hooks: a torchbp
    layer adds no state to its native class, so the swap only changes which
    ``forward`` runs. Without ``inplace`` the original is left untouched and a
    deep copy is returned; with it, the original's parameters (and so any
    optimizer holding them) keep working. Only exact native classes are
    swapped; a subclass of torch.nn.Linear has behaviour of its own and is left
    as it is.
    """
    return _swap_classes(module, hand_class, inplace)


def fuse(module: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """:func:`convert`, and every torch.nn.Sequential becomes a :class:`torchbp.nn.Sequential`,
    which runs a chain of Linear layers and activations as one Function (and falls back to
    the per-layer path where that does not apply). Parameters and state_dict keys stay."""

    def fused_class(m: torch.nn.Module) -> type[torch.nn.Module] | None:
        return Sequential if type(m) is torch.nn.Sequential else hand_class(m)

    return _swap_classes(module, fused_class, inplace)


def fuse_loss(model: torch.nn.Module, loss_fn: torch.nn.Module, scale: float = 1.0, inplace: bool = False) -> FusedLoss:
    """``scale * loss_fn(model(input), target)`` as one module, a :class:`torchbp.nn.FusedLoss` of
    :func:`fuse` of ``model`` and :func:`convert` of ``loss_fn`` (copies of both, unless ``inplace``).
    A chain of Linear layers and activations with an MSELoss then runs as one Function, network and loss
    together: the derivation's J = ½ Σ (y − ŷ)² is ``fuse_loss(net, MSELoss(reduction="sum"), scale=0.5)``."""
    return FusedLoss(fuse(model, inplace), convert(loss_fn, inplace), scale)


def to_native(module: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """The reverse of :func:`convert` and :func:`fuse`: every torchbp layer becomes its torch.nn class."""
    return _swap_classes(module, lambda m: _NATIVE.get(type(m)), inplace)


def _swap_classes(
    module: torch.nn.Module, new_class: Callable[[torch.nn.Module], type[torch.nn.Module] | None], inplace: bool
) -> torch.nn.Module:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    for submodule in module.modules():
        swapped = new_class(submodule)
        if swapped is not None:
            submodule.__class__ = swapped
    return module
