"""The squared-error loss ℓ = reduce((ŷ − y)²): its Function, functional form, module and fused step."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import _reduction

from torchbp import autocast
from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule, product, products_in_place, squared_error
from torchbp.table import Layer, Step, register
from torchbp.validation import validate_loss, validate_reduction


class MSELossFunction(HandDerivedFunction):
    r"""ℓ = reduce((ŷ − y)²) over every element, with the backward derived by hand.

    reduce is a mean over the N elements ("mean"), a sum ("sum") or nothing
    ("none"). Given g = ∂J/∂ℓ:

    - ∂J/∂ŷ = (ŷ − y) · 2/N ⊙ g   with N = 1 for "sum" and "none"
    - ∂J/∂y = −∂J/∂ŷ

    The factors are multiplied in the order native torch uses, so in float32
    and float64 the two agree to the last bit (float16 and bfloat16 to rounding).

    The derivation's cost J = ½ Σ (y − ŷ)² is ``0.5 * mse_loss(ŷ, y, reduction="sum")``,
    whose gradient is the familiar ŷ − y.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        validate_reduction(reduction)
        # Floating point, one dtype and device, and one shape: no silent broadcast of the target.
        validate_loss("mse_loss", input, target)
        return squared_error(input, target, reduction)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        y_hat, y, reduction = inputs
        ctx.save_for_backward(y_hat, y)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y_hat, y = ctx.saved_tensors
        need_y_hat, need_y, _ = ctx.needs_input_grad
        return (*mse_loss_backward(g, y_hat, y, ctx.reduction, need_y_hat, need_y), None)


def mse_loss_backward(
    g: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, reduction: str, need_y_hat: bool, need_y: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂ℓ, the gradients (∂J/∂ŷ, ∂J/∂y), each only when needed."""
    if not (need_y_hat or need_y):
        return None, None
    # max(·, 1): an empty batch has an empty gradient, and 2/0 must not stop it.
    N = max(y_hat.numel(), 1) if reduction == "mean" else 1
    grad_y_hat = product(products_in_place(g), y_hat - y, 2 / N, g)  # (ŷ − y) · 2/N ⊙ g
    return grad_y_hat if need_y_hat else None, -grad_y_hat if need_y else None


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared error, as torch.nn.functional.mse_loss, backward by MSELossFunction.

    Unlike the native loss, a target whose shape differs from the input's is
    refused with a ShapeError (a ValueError) instead of being broadcast. Under
    ``torch.autocast`` it runs in float32, as the native one does.
    """
    if weight is not None:
        raise NotImplementedError("torchbp.functional.mse_loss has no hand-derived backward for weight=")
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if autocast.any_enabled() and isinstance(input, torch.Tensor):
        input, target = autocast.cast_as_autocast_would(autocast.FLOAT32, input, target)
    return MSELossFunction.apply(input, target, reduction)  # type: ignore[no-any-return]


class MSELoss(HandDerivedModule, torch.nn.MSELoss):
    r"""torch.nn.MSELoss whose backward is :class:`MSELossFunction`.

    .. math:: \ell = \operatorname{reduce}((\hat y - y)^2)

    Args:
        size_average, reduce, reduction: as torch.nn.MSELoss.

    Shape:
        - Input and target: :math:`(*)`, one shape for both (no broadcasting).
        - Output: a scalar, or :math:`(*)` with ``reduction="none"``.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse_loss(input, target, reduction=self.reduction)


def reduction_of(loss: torch.nn.Module) -> tuple[Any, ...]:
    """The loss's arguments in the fused chain after its target."""
    return (loss.reduction,)


register(
    Layer(
        torch.nn.MSELoss,
        MSELoss,
        MSELossFunction,
        mse_loss,
        step=Step(
            "mse_loss",
            MSELossFunction.forward,
            mse_loss_backward,
            reads="input",
            arity=2,
            arguments=reduction_of,
            loss=True,
            constants=(1,),
        ),
    )
)
