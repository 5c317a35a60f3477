"""Dropout a = x ⊙ m / (1 − p), m a random 0/1 mask drawn as native draws it: its Function, functional form and
module."""

from __future__ import annotations

from typing import Any

import torch

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.table import Layer, register
from torchbp.validation import validate_floating


def validate_probability(p: Any) -> None:
    """As native's F.dropout refuses it (ValueError)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def draws_natives_fused_mask(input: torch.Tensor, p: float) -> bool:
    """Does native draw this dropout's mask as torch.native_dropout? For 0 < p < 1 and a non-empty input:
    off the CPU (ATen's dropout calls its fused kernel there) and while torch.compile traces (its
    decomposition of dropout is native_dropout); eagerly on the CPU native draws a Bernoulli tensor."""
    on_the_cpu = input.device.type == "cpu" and not torch.compiler.is_compiling()
    return not on_the_cpu and 0 < p < 1 and input.numel() > 0


def drop(input: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ⊙ m / (1 − p), the factor its backward multiplies by), m drawn as native's dropout draws it:
    m / (1 − p) itself, or torch.native_dropout's boolean mask m (see :func:`times_factor`)."""
    if p == 1:  # native multiplies by a zero scalar
        factor = input.new_zeros(())
        return input * factor, factor
    if draws_natives_fused_mask(input, p):
        output, mask = torch.native_dropout(input, p, True)
        return output, mask
    factor = torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)  # m / (1 − p), native's noise
    return input * factor, factor


def times_factor(g: torch.Tensor, factor: torch.Tensor, p: float) -> torch.Tensor:
    """g ⊙ m / (1 − p) from :func:`drop`'s factor: g ⊙ factor, or for a boolean mask m, g ⊙ m · 1/(1 − p)."""
    return g * factor * (1 / (1 - p)) if factor.dtype == torch.bool else g * factor


class DropoutFunction(HandDerivedFunction):
    r"""a = x ⊙ m / (1 − p), m_i ~ Bernoulli(1 − p), with the backward derived by hand:

    a is linear in x with the fixed factor m / (1 − p), so ∂J/∂x = g ⊙ m / (1 − p).

    ``DropoutFunction.apply(input, p)`` draws m in training mode. It draws as native's
    ``F.dropout`` does, so that a native model and a torchbp one draw the same mask from the
    same random state: eagerly on the CPU, native's Bernoulli tensor divided by 1 − p (the
    factor, saved: m / (1 − p)); on other devices and under torch.compile
    ``torch.native_dropout`` (its mask saved, and multiplied by 1/(1 − p) in the backward).
    p = 1 multiplies by zero, as native does (draws nothing); p = 0 and an empty input never
    reach it (the functional form returns the input, as native does).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        validate_floating("dropout", input)
        return drop(input, p)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        _, factor = output  # m / (1 − p), or the fused kernel's boolean mask m
        ctx.mark_non_differentiable(factor)
        ctx.save_for_backward(factor)
        ctx.p = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _: Any) -> tuple[torch.Tensor, None]:
        (factor,) = ctx.saved_tensors
        return times_factor(g, factor, ctx.p), None


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """As torch.nn.functional.dropout, backward by DropoutFunction.

    Outside training, with p = 0 or an empty input, the input itself (as natively). With ``inplace=True`` the
    result is written back into ``input`` (a copy recorded by autograd) and ``input`` is returned.
    """
    validate_probability(p)
    if not training or p == 0 or input.numel() == 0:
        return input
    output, _ = DropoutFunction.apply(input, p)
    return input.copy_(output) if inplace else output


class Dropout(HandDerivedModule, torch.nn.Dropout):
    r"""torch.nn.Dropout whose backward is :class:`DropoutFunction`.

    .. math:: a = x \odot m / (1 - p), \qquad \partial J/\partial x = g \odot m / (1 - p)

    Args:
        p, inplace: as torch.nn.Dropout's. The mask is drawn as native draws it, so a native model and its
            torchbp twin draw alike from the same random state.

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training, self.inplace)


register(Layer(torch.nn.Dropout, Dropout, DropoutFunction, dropout))
