"""The hand-derived autograd Functions, by name: ``torchbp.functions.LinearFunction`` and the rest.

Each lives in its layer's file in ``torchbp/layers/`` and is named here from the
table (``torchbp.layers.LAYERS``); ``SequentialFunction`` is the fused chain's
(:mod:`torchbp.speed.fused`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchbp.layers import LAYERS, OPERATIONS
from torchbp.speed.fused import SequentialFunction
from torchbp.validation import ArgumentError, ClassIndexError, DeviceError, DTypeError, IndexRangeError, ShapeError

# each once: MultiheadAttention's table entry names the attention's Function, which it runs
_FUNCTIONS = list(dict.fromkeys([layer.function for layer in LAYERS] + [op.function for op in OPERATIONS]))
globals().update({function.__name__: function for function in _FUNCTIONS})

__all__ = [
    *(function.__name__ for function in _FUNCTIONS),
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
