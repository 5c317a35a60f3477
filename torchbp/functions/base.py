"""What every hand-derived Function shares: how it is applied, and when its backward may multiply in place."""

from __future__ import annotations

import torch

from torchbp.functions.shortcuts import (
    ctx_in_forward_twin,
    is_batchedtensor,
    is_legacy_batchedtensor,
    transforms_active,
    unwrap_dead_wrappers,
)


def products_in_place(grad_output: torch.Tensor) -> bool:
    """May a backward multiply ``grad_output`` into its own fresh temporary, in place?

    Not while the backward is itself being differentiated (grad mode is on inside a
    backward only under ``create_graph=True``): every product must then be recorded.
    Not when the gradient is batched (torch.func transforms, ``is_grads_batched=True``,
    vectorised jacobians): a batched tensor cannot be multiplied into an unbatched
    one in place. Not while torch.compile traces the backward: the compiler fuses
    the products anyway.
    """
    return not (
        torch.compiler.is_compiling()  # first: the compiler is not to trace the private checks below
        or torch.is_grad_enabled()
        or transforms_active()
        or is_batchedtensor(grad_output)
        or is_legacy_batchedtensor(grad_output)
    )


class HandDerivedFunction(torch.autograd.Function):
    """Base of the torchbp Functions: ``apply`` runs the cheapest form that behaves the same.

    Outside torch.func transforms and torch.compile, and with every argument
    positional (as torchbp always calls them), a Function runs through its
    twin with ``ctx`` in forward (see ``torchbp.functions.shortcuts``);
    otherwise through the full ``Function.apply`` and ``setup_context``.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_eager_twin_of" not in cls.__dict__:
            cls._apply_eagerly = ctx_in_forward_twin(cls)

    @classmethod
    def apply(cls, *args, **kwargs):
        if kwargs or torch.compiler.is_compiling() or transforms_active():
            return super().apply(*args, **kwargs)
        return cls._apply_eagerly(*unwrap_dead_wrappers(args))
