"""Functional forms of the hand-derived layers, with torch.nn.functional's signatures and autocast's casts.

Each lives in its layer's file in ``torchbp/layers/`` and is named here from the
table (``torchbp.layers.LAYERS``, and ``OPERATIONS`` for those without a module:
attention): ``torchbp.functional.linear`` is ``torchbp.layers.linear.linear``,
backward by ``LinearFunction``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchbp.layers import LAYERS, OPERATIONS

_FORMS = [layer.functional for layer in LAYERS] + [operation.functional for operation in OPERATIONS]
globals().update({form.__name__: form for form in _FORMS})

__all__ = [form.__name__ for form in _FORMS]

if TYPE_CHECKING:  # the table's names are made at run time: a type checker takes them as Any

    def __getattr__(name: str) -> Any: ...
