"""Leans on private PyTorch internals: torch._C._FunctionBase.apply, torch._C._are_functorch_transforms_active,
torch._C._functorch.is_batchedtensor / is_legacy_batchedtensor, torch._functorch.utils.unwrap_dead_wrappers and
torch.autograd.function._SingleLevelFunction.setup_context.

``Function.apply`` on a ``setup_context``-style Function first binds its
arguments to ``forward``'s signature with ``inspect`` (about 20 µs, more than
a small layer's arithmetic), then calls ``forward`` and ``setup_context`` as
two Python calls. torchbp's Functions are always called with their arguments
given positionally, so outside torch.func transforms and torch.compile they
run through a twin in the older form instead (``forward(ctx, *args)``), whose
forward calls the Function's own ``forward`` and ``setup_context`` and whose
backward is inherited: each formula still lives in one place, and the twin
only changes how PyTorch calls it. Transforms need the ``setup_context`` form,
and the compiler traces it, so there the full ``Function.apply`` runs.

Where a PyTorch version lacks these internals, every call takes the full path.
"""

from __future__ import annotations

import torch

try:
    from torch._C import _are_functorch_transforms_active
    from torch._C._functorch import is_batchedtensor, is_legacy_batchedtensor
    from torch._functorch.utils import unwrap_dead_wrappers
    from torch.autograd.function import _SingleLevelFunction
except ImportError:  # pragma: no cover - a PyTorch without these internals takes the full path
    _are_functorch_transforms_active = None


def transforms_active() -> bool:
    """Is a torch.func transform (vmap, grad, jacrev, batched gradients) running?"""
    return _are_functorch_transforms_active is None or _are_functorch_transforms_active()


def is_batched(tensor: torch.Tensor) -> bool:
    """Is ``tensor`` a batched tensor of torch.func's vmap or of a batched gradient?"""
    return is_batchedtensor(tensor) or is_legacy_batchedtensor(tensor)


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
