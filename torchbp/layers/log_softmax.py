"""The log-softmax log p = z − log Σ e^z over one dimension: its Function, functional form and module."""

from __future__ import annotations

from typing import Any

import torch

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.layers.softmax import over_a_dim, step_over_a_dim
from torchbp.table import Layer, register
from torchbp.validation import validate_floating


def log_softmax_backward(g: torch.Tensor, log_y: torch.Tensor, dim: int, in_place: bool = False) -> torch.Tensor:
    """∂J/∂z = g − p Σ_d g, from the saved output log p (``log_y``; p = softmax(z) = e^{log p}).

    One multiply-add (one rounding), as native's kernel computes it; ``in_place`` writes it
    into g, which must then be a temporary of the caller's (cross-entropy's −λ y).
    """
    total = g.sum(dim, keepdim=True)  # Σ_d g_d
    y = log_y.exp()
    return g.addcmul_(y, total, value=-1) if in_place else torch.addcmul(g, y, total, value=-1)


class LogSoftmaxFunction(HandDerivedFunction):
    r"""log p = log softmax(z) over ``dim``, log p_i = z_i − log Σ_k e^{z_k}, with the backward derived by hand:
    given g = ∂J/∂log p,

    ∂ log p_i/∂z_j = [i = j] − p_j, so ∂J/∂z_j = Σ_i g_i ([i = j] − p_j) = g_j − p_j Σ_i g_i,

    that is ∂J/∂z = g − p Σ g, with p = e^{log p} from the saved output.
    ``LogSoftmaxFunction.apply(input, dim)``; gradients agree with native's to rounding
    (native's kernel sums Σ g and takes e^{log p} in its own way).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, dim: int) -> torch.Tensor:
        validate_floating("log_softmax", input)
        return torch.log_softmax(input, dim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (log_y,) = ctx.saved_tensors
        return log_softmax_backward(g, log_y, ctx.dim), None


def log_softmax(
    input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """log softmax(input) over ``dim``, as torch.nn.functional.log_softmax, backward by LogSoftmaxFunction.

    ``dtype`` casts the input first, as native does; ``dim=None`` picks native's legacy dimension, with its
    warning.
    """
    return over_a_dim(LogSoftmaxFunction, "log_softmax", input, dim, _stacklevel, dtype)


class LogSoftmax(HandDerivedModule, torch.nn.LogSoftmax):
    r"""torch.nn.LogSoftmax whose backward is :class:`LogSoftmaxFunction`.

    .. math:: \log p = z - \log \textstyle\sum e^{z}, \qquad
              \partial J/\partial z = g - p \textstyle\sum g

    Args:
        dim: as torch.nn.LogSoftmax's (None: native's legacy choice, with its warning).

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return log_softmax(input, self.dim, _stacklevel=5)


register(
    Layer(
        torch.nn.LogSoftmax,
        LogSoftmax,
        LogSoftmaxFunction,
        log_softmax,
        step=step_over_a_dim("log_softmax", LogSoftmaxFunction.forward, log_softmax_backward),
    )
)
