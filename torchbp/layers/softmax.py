"""The softmax p = e^z / Σ e^z over one dimension: its Function, functional form and module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule, products_in_place
from torchbp.table import Layer, Step, register
from torchbp.validation import validate_floating


def resolve_dim(op: str, input: torch.Tensor, dim: int | None, stacklevel: int) -> int:
    """``dim`` itself, or for None the dimension native picks (with native's deprecation warning): 0 for a
    tensor of 0, 1 or 3 dimensions, else 1."""
    if dim is None:
        chosen: int = F._get_softmax_dim(op, input.dim(), stacklevel + 1)  # type: ignore[attr-defined]  # private
        return chosen
    return dim


def over_a_dim(
    function: type[HandDerivedFunction],
    op: str,
    input: torch.Tensor,
    dim: int | None,
    stacklevel: int,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """``function.apply(input, dim)`` with the arguments of native's softmax and log-softmax: ``dim=None``
    picks native's legacy dimension (with its warning), and ``dtype`` casts the input first (the cast is
    recorded, so the gradient comes back in the input's dtype)."""
    dim = resolve_dim(op, input, dim, stacklevel + 1)
    if dtype is not None:
        input = input.to(dtype)
    return function.apply(input, dim)  # type: ignore[no-any-return]


def step_over_a_dim(
    kind: str, forward: Callable[[torch.Tensor, int], torch.Tensor], formula: Callable[..., torch.Tensor]
) -> Step:
    """The fused step of a layer over one dimension whose backward ``formula(g, output, dim)`` reads its
    output: its dim the one constant argument; a module without a dim runs per layer."""

    def backward(delta: torch.Tensor, output: torch.Tensor, dim: int, need_input: bool) -> tuple[torch.Tensor]:
        return (formula(delta, output, dim),)

    return Step(kind, forward, backward, reads="output", arity=1, arguments=with_a_dim, constants=(0,))


def softmax_backward(g: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """∂J/∂z = p ⊙ (g − Σ_d g ⊙ p), the softmax's Jacobian-vector product from its saved output p (``y``)."""
    centred = g - (g * y).sum(dim, keepdim=True)  # g − Σ_d g_d p_d, a new tensor
    return centred.mul_(y) if products_in_place(g) else centred * y


class SoftmaxFunction(HandDerivedFunction):
    r"""p = softmax(z) over ``dim``, p_i = e^{z_i} / Σ_k e^{z_k}, with the backward derived by hand: given
    g = ∂J/∂p,

    ∂p_i/∂z_j = p_i ([i = j] − p_j), so ∂J/∂z_j = Σ_i g_i p_i ([i = j] − p_j) = p_j (g_j − Σ_i g_i p_i),

    that is ∂J/∂z = p ⊙ (g − Σ g ⊙ p): the Jacobian is never formed. From the saved output p
    only. ``SoftmaxFunction.apply(input, dim)``; gradients agree with native's to rounding
    (native's kernel sums Σ g ⊙ p in its own order).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, dim: int) -> torch.Tensor:
        validate_floating("softmax", input)
        return torch.softmax(input, dim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return softmax_backward(g, y, ctx.dim), None


def softmax(
    input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """softmax(input) over ``dim``, as torch.nn.functional.softmax, backward by SoftmaxFunction.

    ``dtype`` casts the input first, as native does; ``dim=None`` picks native's legacy dimension, with its
    warning (see :func:`over_a_dim`).
    """
    return over_a_dim(SoftmaxFunction, "softmax", input, dim, _stacklevel, dtype)


class Softmax(HandDerivedModule, torch.nn.Softmax):
    r"""torch.nn.Softmax whose backward is :class:`SoftmaxFunction`.

    .. math:: p = \operatorname{softmax}(z), \qquad \partial J/\partial z = p \odot (g - \textstyle\sum g \odot p)

    Args:
        dim: as torch.nn.Softmax's (None: native's legacy choice, with its warning).

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return softmax(input, self.dim, _stacklevel=5)


def with_a_dim(module: torch.nn.Softmax) -> tuple[int] | None:
    """A softmax's argument in the fused chain, its dim; one without a dim runs per layer."""
    return None if module.dim is None else (module.dim,)


register(
    Layer(
        torch.nn.Softmax,
        Softmax,
        SoftmaxFunction,
        softmax,
        step=step_over_a_dim("softmax", SoftmaxFunction.forward, softmax_backward),
    )
)
