"""What every hand-derived Function shares: a cheaper ``apply``.

``torch.autograd.Function.apply`` binds its arguments to ``forward``'s
signature with ``inspect`` on every call of a ``setup_context``-style Function,
which costs about 20 µs: more than the arithmetic of a small layer. torchbp's
Functions are always called with every argument given positionally, so the
binding changes nothing and is skipped. Under torch.func transforms and while
torch.compile traces, the full ``Function.apply`` runs as usual.

The shortcut uses two private hooks of PyTorch; where a version lacks them,
every call takes the full path.
"""

from __future__ import annotations

import torch

try:
    from torch._C import _are_functorch_transforms_active
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:  # pragma: no cover - a PyTorch without these hooks takes the full path
    _are_functorch_transforms_active = None


class HandDerivedFunction(torch.autograd.Function):
    """Base of the torchbp Functions; see the module docstring."""

    @classmethod
    def apply(cls, *args):
        if (
            _are_functorch_transforms_active is None
            or torch.compiler.is_compiling()
            or _are_functorch_transforms_active()
        ):
            return super().apply(*args)
        # What Function.apply does outside transforms, less the signature binding.
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))
