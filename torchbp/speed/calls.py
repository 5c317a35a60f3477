"""Shortcuts around PyTorch's per-call costs, which for a small layer exceed its arithmetic.

Leans on private PyTorch internals: torch._C._FunctionBase.apply, _SingleLevelFunction.setup_context,
torch._C._are_functorch_transforms_active, torch._C._nn.mse_loss, torch._C._functorch.is_legacy_batchedtensor
and unwrap_if_dead. Where a PyTorch version lacks them, every call takes the full path.

- **The older-form twin** (:data:`TWINS`). ``Function.apply`` on a ``setup_context``-style
  Function first binds its arguments to ``forward``'s signature with ``inspect``, then calls
  ``forward`` and ``setup_context`` as two Python calls. torchbp's Functions are always called with
  their arguments given positionally, so outside torch.func transforms and torch.compile they run
  through a twin in the older form (``forward(ctx, *args)``), whose forward calls the Function's own
  ``forward`` and ``setup_context`` and whose backward is inherited: each formula still lives in one
  place, and the twin only changes how PyTorch calls it. Measured on the 2-core CPU machine, torch
  2.13.0, one thread: SigmoidFunction.apply on a 5×3 input 9.5 µs through the twin against 37 µs
  through ``Function.apply``, LinearFunction.apply 14 µs against 58 µs (native torch.sigmoid: 2.7 µs).
- **Products in place** (:func:`products_in_place`): a backward may multiply its factors into one
  fresh temporary instead of recording each product, so it holds one temporary where native torch's
  kernel holds one; this is what keeps the compute-bound MLP's peak memory at native's (1.003, where
  recorded products hold one temporary per factor).
- **A selection by bit masks** (:func:`keep_where_nonzero`): on the CPU, ``torch.where`` and the
  comparison that makes its condition run element by element, where integer bit operations run
  vectorised, so ReLU's g ⊙ 1[a > 0] as bit masks takes 0.43 ms on a 32×32×32×32 float32 tensor
  against ``torch.where``'s 4.9 ms (native's fused ``threshold_backward``: 0.26 ms; one thread), and
  23 µs against 33 µs on 64×256 (native: 6 µs), with the same bits.
- **The squared error's kernel** (:func:`mse_loss_of_equal_shapes`): ``F.mse_loss`` broadcasts its
  arguments before calling the kernel; for one shape it calls the kernel directly: 4.0 µs against
  9.4 µs on a 5×1 float64 input, 12 µs against 19 µs on 64×256 (one thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

try:
    from torch._C import _are_functorch_transforms_active
    from torch._C._functorch import is_legacy_batchedtensor, unwrap_if_dead
    from torch._C._nn import mse_loss as _mse_loss_kernel
    from torch.autograd.function import _SingleLevelFunction

    SHORTCUTS = True
except ImportError:  # pragma: no cover - a PyTorch without these internals takes the full path
    SHORTCUTS = False


# Is a torch.func transform (vmap, grad, …) running? Asked on every layer's every call, so the C function
# itself; without it, every call counts as transformed and takes the full path.
transforms_active: Callable[[], bool] = _are_functorch_transforms_active if SHORTCUTS else (lambda: True)


class Twins(dict[type, Callable[..., Any]]):
    """Each Function's twin's apply, made on its first call and kept: ``TWINS[cls](*unwrap_dead_wrappers(args))``
    (a dictionary read, not a Python call, on the path of every layer's every call)."""

    def __missing__(self, function: type[torch.autograd.Function]) -> Callable[..., Any]:
        apply = self[function] = _ctx_in_forward_twin(function)
        return apply


TWINS = Twins()


def _ctx_in_forward_twin(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """The ``apply`` of a subclass of ``function`` in the older form, with ``ctx`` in forward.

    PyTorch calls the older form's ``forward(ctx, *args)`` directly, without the
    signature binding, when the class leaves ``setup_context`` as the base's.
    The twin's forward runs ``function.forward`` and ``function.setup_context``,
    and its backward is ``function.backward`` by inheritance; all three are
    looked up at call time, so a patched formula is seen by both paths. Its
    nodes are named ``<Function>EagerBackward``.
    """

    def forward(ctx: Any, *args: Any) -> Any:
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    twin = type(
        f"{function.__name__}Eager",
        (function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(_SingleLevelFunction.setup_context),  # the older form
            "__module__": function.__module__,
            "eager_twin_of": function,  # what verify diagnoses: the Function torch.func runs instead
        },
    )
    return super(torch.autograd.Function, twin).apply  # type: ignore[misc, no-any-return]  # _FunctionBase.apply


def unwrap_dead_wrappers(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with every tensor that a finished torch.func transform left wrapped unwrapped, as
    ``Function.apply`` does (torch._functorch.utils.unwrap_dead_wrappers). A transform wraps every
    tensor, a parameter too, as a plain ``torch.Tensor``, so only those are asked."""
    return tuple([unwrap_if_dead(a) if type(a) is torch.Tensor else a for a in args])


def products_in_place(g: torch.Tensor) -> bool:
    """May a backward given the upstream gradient g multiply its factors into a fresh temporary of its own,
    in place?

    Not while the backward is itself being differentiated (grad mode is on inside a
    backward only under ``create_graph=True``): every product must then be recorded.
    Not when g is batched: under torch.func transforms (whose batched tensors exist
    only while one is active), nor under ``is_grads_batched=True`` and vectorised
    jacobians, which batch the upstream gradient in the older form: a batched tensor
    cannot be multiplied into an unbatched one in place. The backward's other factors
    come from its saved tensors and constants, which these never batch. Not while
    torch.compile traces the backward: the compiler fuses the products anyway.
    """
    if torch.compiler.is_compiling() or not SHORTCUTS:  # first: the compiler is not to trace the checks below
        return False
    return not (torch.is_grad_enabled() or transforms_active() or is_legacy_batchedtensor(g))


# The signed integer of each floating-point width, to read and mask a float's bits.
_SAME_WIDTH_INTEGER = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def keep_where_nonzero(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """g where t ≠ 0 (a NaN counts as non-zero), exactly +0 where t = ±0: ``torch.where(t == 0, 0, g)``,
    the same bits, for g and t of one shape and dtype.

    Where a backward may work in place on the CPU (:func:`products_in_place`), as bit masks:
    t's bits less its sign bit are 0 exactly where t = ±0; negated and shifted right
    arithmetically by all but one bit they are all ones where t ≠ 0 and all zeros where it is
    0; and-ed with g's bits they keep g or give the bits of +0. Four vectorised integer
    operations into one fresh tensor, against a comparison and a selection that run element
    by element (see the module's docstring). Elsewhere (double backward, torch.func, the
    compiler, which fuses the selection, and other devices, where it is one fast kernel)
    ``torch.where``.
    """
    integer = _SAME_WIDTH_INTEGER.get(t.dtype)
    if integer is None or not (g.is_cpu and products_in_place(g)):
        return torch.where(t == 0, 0, g)
    info = torch.iinfo(integer)
    mask = t.view(integer) & info.max  # |t|'s bits: 0 exactly where t = ±0
    mask.neg_().bitwise_right_shift_(info.bits - 1)  # all ones where t ≠ 0, else all zeros
    return mask.bitwise_and_(g.view(integer)).view(g.dtype)


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum


def mse_loss_of_equal_shapes(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """``F.mse_loss(input, target, reduction=reduction)`` for an input and target of one shape, without
    its broadcast (the same kernel on the same tensors, so the same bits)."""
    if not SHORTCUTS or torch.compiler.is_compiling():
        return F.mse_loss(input, target, reduction=reduction)
    # torch's stub says the reduction is a str; the kernel takes the enum's value
    return _mse_loss_kernel(input, target, _REDUCTIONS[reduction])  # type: ignore[arg-type]
