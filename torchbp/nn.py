"""Drop-in modules: torch.nn's layers with hand-derived backward passes, and the table of them.

Each subclasses its native module and changes nothing but ``forward``: the
constructor, initialization, parameters, state_dict keys and extra_repr are
the native module's own, so ``isinstance(m, torch.nn.Linear)`` holds and
state_dicts move freely between the two. Each lives in its layer's file in
``torchbp/layers/`` and is named here from ``LAYERS``, the one table of the
hand-derived layers (:mod:`torchbp.table`): ``torchbp.nn.Linear`` is
``torchbp.layers.linear.Linear``. ``Sequential`` and ``FusedLoss`` run a chain
(and its loss) as one Function (:mod:`torchbp.speed.fused`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchbp.layers import LAYERS
from torchbp.speed.fused import FusedLoss, Sequential

globals().update({layer.hand.__name__: layer.hand for layer in LAYERS})

__all__ = [*(layer.hand.__name__ for layer in LAYERS), "Sequential", "FusedLoss", "LAYERS"]

if TYPE_CHECKING:  # the table's names are made at run time: a type checker takes them as Any

    def __getattr__(name: str) -> Any: ...
