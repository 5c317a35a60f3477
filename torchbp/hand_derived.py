"""What every layer file builds on: the base of the hand-derived Functions, the elementwise base of the
activations, products of factors, and the marker of torchbp's modules.

This is the one place where the math meets the speed machinery (``torchbp.speed.calls``):
``HandDerivedFunction.apply`` takes the cheaper call where it behaves the same,
``products_in_place`` decides whether a backward multiplies its factors in place or records
them (:func:`product` multiplies), and
:func:`squared_error` is the squared error's kernel without its broadcast. The
formulas in ``torchbp/layers/`` read without either.
"""

from __future__ import annotations

from typing import Any

import torch

from torchbp.speed.calls import (  # the one hook into the speed package
    TWINS,
    keep_where_nonzero,
    mse_loss_of_equal_shapes,
    transforms_active,
    unwrap_dead_wrappers,
)
from torchbp.speed.calls import products_in_place as products_in_place  # used by the layers' backwards
from torchbp.table import Step


class HandDerivedFunction(torch.autograd.Function):
    """Base of the torchbp Functions: ``apply`` runs the cheapest form that behaves the same.

    Outside torch.func transforms and torch.compile, and with every argument
    positional (as torchbp always calls them), a Function runs through its
    twin with ``ctx`` in forward (see :mod:`torchbp.speed.calls`); otherwise
    through the full ``Function.apply`` and ``setup_context``. Either way the
    same ``forward``, ``setup_context`` and ``backward`` run.
    """

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs or torch.compiler.is_compiling() or transforms_active():  # these need setup_context's form
            return super().apply(*args, **kwargs)  # type: ignore[no-untyped-call]  # torch leaves apply untyped
        return TWINS[cls](*unwrap_dead_wrappers(args))


def save_for_normalisation_backward(
    ctx: Any,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    need_x: bool,
    need_weight: bool,
) -> None:
    """What a normalisation's ``setup_context`` keeps, for (x, μ, rstd, γ) as its ``saved_tensors``: μ and rstd
    are outputs that get no gradient (and no zeros are made for them); ∂J/∂x and ∂J/∂γ read x̃ (from x, μ and
    rstd), ∂J/∂x reads γ, ∂J/∂β reads g alone, so only what is read is saved, None in place of the rest."""
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    x_tilde_read = need_x or need_weight
    ctx.save_for_backward(*((x, mean, rstd) if x_tilde_read else (None, None, None)), weight if need_x else None)


def running_eagerly() -> bool:
    """Outside torch.compile and torch.func transforms: where a check may read a tensor's values."""
    return not (torch.compiler.is_compiling() or transforms_active())


def product(
    in_place: bool, first: torch.Tensor, second: torch.Tensor | float, third: torch.Tensor | None = None
) -> torch.Tensor:
    """first ⊙ second (⊙ third), multiplied left to right.

    ``first`` must be a new tensor of the caller's (``1 - a``, ``ŷ - y``). With ``in_place``
    (given as ``products_in_place(g)``) the factors are multiplied into it in place, so the
    backward holds one temporary; otherwise every product is recorded (double backward).
    Both give the same bits. (Two or three factors, named: CPython calls a function of a
    fixed count of arguments inline, which is 0.2 µs less than one that takes ``*factors``.)
    """
    if in_place:
        first.mul_(second)
        return first if third is None else first.mul_(third)
    first = first * second
    return first if third is None else first * third


# ``F.mse_loss(input, target, reduction=reduction)`` for an input and target of one shape.
squared_error = mse_loss_of_equal_shapes


class Indicator:
    """A derivative that is 1 or 0: 1 where the tensor ``nonzero`` is non-zero (a NaN counts as non-zero),
    0 where it is ±0. ``g ⊙`` it is g set to exactly +0 where it is 0 (a selection, not a product, so a
    NaN or ∞ in g becomes 0 where the derivative is 0, as natively)."""

    __slots__ = ("nonzero",)

    def __init__(self, nonzero: torch.Tensor) -> None:
        self.nonzero = nonzero


Derivative = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Indicator


def chain_rule(function: type[ElementwiseFunction], g: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """∂J/∂z = g ⊙ f'(z), with f'(z) = ``function.derivative(saved)`` (looked up at each call) in one of
    its forms: one tensor; two factors (f1, f2), f1 a new tensor, multiplied as f1 g f2 (σ' = (1 − a) a
    taken in the order native torch takes g (1 − a) a); or an :class:`Indicator`."""
    derivative = function.derivative(saved)
    if isinstance(derivative, tuple):
        f1, f2 = derivative
        return product(products_in_place(g), f1, g, f2)
    if isinstance(derivative, Indicator):
        return keep_where_nonzero(g, derivative.nonzero)
    if derivative is saved:  # f' is the saved tensor itself (as eᶻ's is): multiply into a new tensor, never into it
        return saved * g
    return product(products_in_place(g), derivative, g)


class ElementwiseFunction(HandDerivedFunction):
    r"""An elementwise activation a = f(z) whose backward reads one saved tensor: its output a, or its input z.

    A subclass writes ``forward(input)`` (its input check and the native op) and
    ``derivative(t)``, f'(z) from the saved tensor t (a by default; z where the
    subclass sets ``saves = "input"``), in one of the forms :func:`chain_rule`
    takes. This base saves t, and its backward is ∂J/∂z = g ⊙ f'(z). The backward
    looks ``derivative`` up at call time, so the per-layer path and the fused chain
    (:meth:`fused_step`) always share one formula.
    """

    generate_vmap_rule = True
    saves = "output"  # or "input": the tensor the derivative is computed from

    @staticmethod
    def derivative(t: torch.Tensor) -> Derivative:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "derivative" not in cls.__dict__:  # the eager twin of an activation: it inherits what it needs
            return
        if cls.saves not in ("output", "input"):
            raise ValueError(f"{cls.__name__}.saves: expected 'output' or 'input', got {cls.saves!r}")

        def save_output(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            ctx.save_for_backward(output)

        def save_input(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            ctx.save_for_backward(inputs[0])

        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            (t,) = ctx.saved_tensors
            return chain_rule(cls, g, t)

        cls.setup_context = staticmethod(save_output if cls.saves == "output" else save_input)  # type: ignore[method-assign]
        cls.backward = staticmethod(backward)  # type: ignore[method-assign]

    @classmethod
    def fused_step(cls, kind: str) -> Step:
        """Its :class:`torchbp.table.Step`: the same forward and backward inside the fused chain."""

        def backward(delta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # a function, not functools.partial:
            return chain_rule(cls, delta, t)  # CPython calls it inline from the chain's loop

        return Step(kind, cls.forward, backward, reads=cls.saves)


class HandDerivedModule:
    """Marks a module as torchbp's, mixed in before its native class: its repr reads ``torchbp.Linear(...)``."""

    def _get_name(self) -> str:
        return f"torchbp.{type(self).__name__}"
