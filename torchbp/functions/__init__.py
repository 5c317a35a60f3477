"""The hand-derived autograd Functions, by name: ``torchbp.functions.LinearFunction`` and the rest.

Each lives in its layer's file in ``torchbp/layers/`` and is named here from the
table (``torchbp.layers.LAYERS``); ``SequentialFunction`` is the fused chain's
(:mod:`torchbp.speed.fused`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchbp.layers import LAYERS
from torchbp.speed.fused import SequentialFunction
from torchbp.validation import ArgumentError, ClassIndexError, DeviceError, DTypeError, IndexRangeError, ShapeError

globals().update({layer.function.__name__: layer.function for layer in LAYERS})

__all__ = [
    *(layer.function.__name__ for layer in LAYERS),
    "SequentialFunction",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "ArgumentError",
    "ClassIndexError",
    "IndexRangeError",
]

if TYPE_CHECKING:  # the table's names are made at run time: a type checker takes them as Any

    def __getattr__(name: str) -> Any: ...
