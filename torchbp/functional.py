"""Functional forms of the hand-derived layers, with torch.nn.functional's signatures and autocast's casts.

Each lives in its layer's file in ``torchbp/layers/`` and is named here from the
table (``torchbp.layers.LAYERS``): ``torchbp.functional.linear`` is
``torchbp.layers.linear.linear``, backward by ``LinearFunction``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchbp.layers import LAYERS

globals().update({layer.functional.__name__: layer.functional for layer in LAYERS})

__all__ = [layer.functional.__name__ for layer in LAYERS]

if TYPE_CHECKING:  # the table's names are made at run time: a type checker takes them as Any

    def __getattr__(name: str) -> Any: ...
