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
    from torch._C._functorch import is_batchedtensor, is_legacy_batchedtensor
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:  # pragma: no cover - a PyTorch without these hooks takes the full path
    _are_functorch_transforms_active = None


def transforms_active() -> bool:
    """Is a torch.func transform (vmap, grad, jacrev, batched gradients) running?"""
    return _are_functorch_transforms_active is None or _are_functorch_transforms_active()


def products_in_place(grad_output: torch.Tensor) -> bool:
    """May a backward multiply ``grad_output`` into its own fresh temporary, in place?

    Not while the backward is itself being differentiated (grad mode is on inside a
    backward only under ``create_graph=True``): every product must then be recorded.
    Not when the gradient is batched (torch.func transforms, ``is_grads_batched=True``,
    vectorised jacobians): a batched tensor cannot be multiplied into an unbatched
    one in place. Not while torch.compile traces the backward: the compiler fuses
    the products anyway.
    """
    return (
        not torch.compiler.is_compiling()
        and not torch.is_grad_enabled()
        and not transforms_active()
        and not is_batchedtensor(grad_output)
        and not is_legacy_batchedtensor(grad_output)
    )


class HandDerivedFunction(torch.autograd.Function):
    """Base of the torchbp Functions; see the module docstring."""

    @classmethod
    def apply(cls, *args, **kwargs):
        if kwargs:
            return super().apply(*args, **kwargs)
        if torch.compiler.is_compiling() or transforms_active():
            return super().apply(*args)
        # What Function.apply does outside transforms, less the signature binding.
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))
