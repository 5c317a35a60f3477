"""Leans on private PyTorch internals: torch._C._FunctionBase.apply, _SingleLevelFunction.setup_context,
torch._C._are_functorch_transforms_active, torch._C._is_any_autocast_enabled, torch._C._nn.mse_loss,
torch._C._functorch.is_batchedtensor, is_legacy_batchedtensor and unwrap_if_dead.

Shortcuts around PyTorch's per-call costs, which for a small layer exceed its arithmetic.

``Function.apply`` on a ``setup_context``-style Function first binds its
arguments to ``forward``'s signature with ``inspect`` (about 20 µs), then
calls ``forward`` and ``setup_context`` as two Python calls. torchbp's
Functions are always called with their arguments given positionally, so
outside torch.func transforms and torch.compile they run through a twin in
the older form instead (``forward(ctx, *args)``), whose forward calls the
Function's own ``forward`` and ``setup_context`` and whose backward is
inherited: each formula still lives in one place, and the twin only changes
how PyTorch calls it. Transforms need the ``setup_context`` form, and the
compiler traces it, so there the full ``Function.apply`` runs.

``torch.nn.functional.mse_loss`` broadcasts its two arguments before calling
the kernel, which costs as much again as the kernel on small tensors; where
the shapes are known to be equal, :func:`mse_loss_of_equal_shapes` calls the
kernel directly.

Where a PyTorch version lacks these internals, every call takes the full path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from torch._C import _are_functorch_transforms_active
    from torch._C._functorch import is_batchedtensor, is_legacy_batchedtensor, unwrap_if_dead
    from torch._C._nn import mse_loss as _mse_loss_kernel
    from torch.autograd.function import _SingleLevelFunction
except ImportError:  # pragma: no cover - a PyTorch without these internals takes the full path
    _are_functorch_transforms_active = _mse_loss_kernel = None
    is_batchedtensor = is_legacy_batchedtensor = unwrap_if_dead = None  # never asked: transforms_active() is True
try:
    from torch._C import _is_any_autocast_enabled
except ImportError:  # pragma: no cover - then autocast is asked for the input's device every time
    _is_any_autocast_enabled = None

# Called on every layer's every call, so the C functions themselves where they exist.
if _are_functorch_transforms_active is not None:
    transforms_active = _are_functorch_transforms_active  # is a torch.func transform (vmap, grad, …) running?
else:  # pragma: no cover

    def transforms_active() -> bool:
        return True


if _is_any_autocast_enabled is not None:
    any_autocast_enabled = _is_any_autocast_enabled  # is autocast on for any device? (then ask for which)
else:  # pragma: no cover

    def any_autocast_enabled() -> bool:
        return True


def ctx_in_forward_twin(function: type[torch.autograd.Function]):
    """The ``apply`` of a subclass of ``function`` in the older form, with ``ctx`` in forward.

    PyTorch calls the older form's ``forward(ctx, *args)`` directly, without the
    signature binding, when the class leaves ``setup_context`` as the base's.
    The twin's forward runs ``function.forward`` and ``function.setup_context``,
    and its backward is ``function.backward`` by inheritance; all three are
    looked up at call time, so a patched formula is seen by both paths. Its
    nodes are named ``<Function>EagerBackward``. None where the internals are missing.
    """
    if _are_functorch_transforms_active is None:
        return None

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    twin = type(
        f"{function.__name__}Eager",
        (function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(_SingleLevelFunction.setup_context),  # the older form
            "_eager_twin_of": function,
            "__module__": function.__module__,
        },
    )
    return super(torch.autograd.Function, twin).apply  # torch._C._FunctionBase.apply, bound to the twin


def unwrap_dead_wrappers(args: tuple) -> tuple:
    """``args`` with every tensor that a finished torch.func transform left wrapped unwrapped, as
    ``Function.apply`` does (torch._functorch.utils.unwrap_dead_wrappers). A transform wraps every
    tensor, a parameter too, as a plain ``torch.Tensor``, so only those are asked."""
    return tuple([unwrap_if_dead(a) if type(a) is torch.Tensor else a for a in args])


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum


def mse_loss_of_equal_shapes(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """``F.mse_loss(input, target, reduction=reduction)`` for an input and target of one shape, without
    its broadcast (the same kernel on the same tensors, so the same bits)."""
    if _mse_loss_kernel is None or torch.compiler.is_compiling():
        return F.mse_loss(input, target, reduction=reduction)
    return _mse_loss_kernel(input, target, _REDUCTIONS[reduction])
