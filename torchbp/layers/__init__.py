"""The hand-derived layers, one file each: a layer's Function, its checks, functional form, drop-in
module, fused step and per-sample rule, and its registration, all in its file.

Importing this package imports every module in this folder; each registers its
layer once (:func:`torchbp.table.register`), and :data:`LAYERS` is the table they
made. A layer added as a new file here is in the table, and so in ``torchbp.nn``,
``torchbp.functional``, ``convert`` and the rest, with no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

from torchbp.table import REGISTERED, REGISTERED_OPERATIONS, Layer, Operation

for _file in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_file.name}")

LAYERS: tuple[Layer, ...] = tuple(REGISTERED)  # in the order of the files' names
OPERATIONS: tuple[Operation, ...] = tuple(REGISTERED_OPERATIONS)  # hand-derived operations with no module
HAND_DERIVED: dict[type[torch.nn.Module], type[torch.nn.Module]] = {layer.native: layer.hand for layer in LAYERS}
_BY_HAND_CLASS = {layer.hand: layer for layer in LAYERS}
_BY_NATIVE_CLASS = {layer.native: layer for layer in LAYERS}


def hand_class(module: torch.nn.Module) -> type[torch.nn.Module] | None:
    """The torchbp class :func:`torchbp.convert` gives a native ``module``: None for a class torchbp
    has no layer for, an exact subclass of one, or an instance its layer cannot run."""
    layer = _BY_NATIVE_CLASS.get(type(module))
    if layer is None or (layer.runs is not None and not layer.runs(module)):
        return None
    return layer.hand


def runs_hand_derived(module: torch.nn.Module) -> bool:
    """Is ``module`` a torchbp layer, or a native one torchbp.convert would replace?"""
    return type(module) in _BY_HAND_CLASS or hand_class(module) is not None


def layer_of(module: torch.nn.Module) -> Layer | None:
    """The table's entry for a torchbp ``module``, None for any other."""
    return _BY_HAND_CLASS.get(type(module))
