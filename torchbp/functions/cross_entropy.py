"""The cross-entropy loss of logits, ℓ_n = −Σ_c q_nc log p_nc, and its hand-derived backward.

Index letters: c runs over the C classes (dimension 1 of z, or 0 for an unbatched
z of shape (C,)); n over samples and positions, that is every other dimension
(N, d1, …). z are the logits, log p_n = z_n − logsumexp_c z_nc their log-softmax,
and q_n the target distribution: the one-hot vector of the class index t_n (all
zero where t_n = ignore_index), or the given class probabilities. Label
smoothing ε mixes it with the uniform distribution, (1 − ε) q_n + ε/C.
ℓ is reduced as native torch reduces it: "mean" divides the sum by the count of
targets (index targets: those not ignored; probabilities: every n), "sum"
sums, "none" keeps ℓ_n.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torchbp.functions.base import HandDerivedFunction, products_in_place
from torchbp.functions.mse_loss import check_reduction
from torchbp.functions.shortcuts import transforms_active
from torchbp.functions.validation import (
    FLOATING,
    DeviceError,
    DTypeError,
    ShapeError,
    check_floating_and_matching,
)

INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
NATIVE_INDEX_DTYPES = (torch.int64, torch.uint8)  # what native nll_loss reads; the others are widened to int64


class ArgumentError(ValueError, RuntimeError):
    """An argument whose value the operation does not accept (native torch raises RuntimeError)."""


class ClassIndexError(IndexError, RuntimeError):
    """A class index outside [0, C) (native torch raises IndexError on the CPU, RuntimeError on CUDA)."""


def class_dim(z: torch.Tensor) -> int:
    return 0 if z.dim() == 1 else 1


def positions_shape(z: torch.Tensor) -> torch.Size:
    """(N, d1, …): z's shape without its class dimension, the shape of an index target and of ℓ."""
    dim = class_dim(z)
    return z.shape[:dim] + z.shape[dim + 1 :]


# -- input checks ----------------------------------------------------------------------------


def check_cross_entropy(
    input: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int, label_smoothing: float
) -> None:
    """A floating-point input of shape (C,), (N, C) or (N, C, d1, …); a target of class indices
    (an integer dtype, shape (N, d1, …)) or of class probabilities (the input's shape, dtype and
    device); a known reduction; label_smoothing in [0, 1]."""
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ArgumentError(f"cross_entropy: expected label_smoothing in [0, 1], got {label_smoothing}")
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and input.dtype in FLOATING
        and input.dim() > 0
        and target.device == input.device
        and (
            target.dtype in INDEX_DTYPES and target.shape == positions_shape(input)
            or target.dtype == input.dtype and target.shape == input.shape and ignore_index < 0
        )
    ):
        return
    check_floating_and_matching("cross_entropy", input=input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"cross_entropy: expected target to be a torch.Tensor, got {type(target).__name__}")
    if input.dim() == 0:
        raise ShapeError("cross_entropy: expected input of shape (C,), (N, C) or (N, C, d1, ...), got ()")
    if target.is_floating_point():
        check_floating_and_matching("cross_entropy", input=input, target=target)
        if target.shape != input.shape:
            raise ShapeError(
                f"cross_entropy: expected a floating-point target (class probabilities) of the input's shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}; class indices of shape "
                f"{tuple(positions_shape(input))} need an integer dtype"
            )
        if ignore_index >= 0:
            raise ArgumentError(
                f"cross_entropy: ignore_index applies to class-index targets only, got ignore_index {ignore_index} "
                f"with a target of class probabilities {tuple(target.shape)}"
            )
        return
    if target.dtype not in INDEX_DTYPES:
        raise DTypeError(
            f"cross_entropy: expected a target of class indices (an integer dtype) or of class probabilities "
            f"({input.dtype}), got {target.dtype}"
        )
    if target.device != input.device:
        raise DeviceError(f"cross_entropy: expected target on the device of input ({input.device}), got {target.device}")
    if target.shape != positions_shape(input):
        raise ShapeError(
            f"cross_entropy: expected a target of class indices of shape {tuple(positions_shape(input))} for input "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )


def check_class_indices(target: torch.Tensor, classes: int, ignore_index: int) -> None:
    """Every class index lies in [0, C) or equals ignore_index.

    This reads the target's values, so it runs eagerly only. Under torch.compile
    and torch.func, native nll_loss in the forward refuses such an index itself,
    so no gradient is ever computed from one.
    """
    if target.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(target)).tolist()  # one read for the common case
    if 0 <= low and high < classes:
        return
    valid = (target >= 0) & (target < classes) | (target == ignore_index)
    if bool(valid.all()):
        return
    bad = target[~valid][0].item()
    raise ClassIndexError(
        f"cross_entropy: expected class indices in [0, {classes}) or ignore_index {ignore_index}, got {bad} "
        f"in the target of shape {tuple(target.shape)}"
    )


# -- the loss, from log p ---------------------------------------------------------------------


def per_class(label_smoothing: float, classes: int) -> float:
    """ε/C, as native's C++ divides: ε/0 is ∞ (a loss over no classes is then NaN, as native's)."""
    return label_smoothing / classes if classes else math.inf


def smoothed(q: torch.Tensor, label_smoothing: float, classes: int) -> torch.Tensor:
    """(1 − ε) q + ε/C, in native's order of operations."""
    return q * (1 - label_smoothing) + per_class(label_smoothing, classes) if label_smoothing > 0 else q


def cross_entropy_from_log_p(
    log_p: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int, label_smoothing: float
) -> torch.Tensor:
    """ℓ from log p, composed of the native operations native cross_entropy composes, so with its bits."""
    dim = class_dim(log_p)
    C = log_p.shape[dim]
    if target.is_floating_point():
        terms = log_p * smoothed(target, label_smoothing, C)  # q_nc log p_nc
        if reduction == "none":
            return -terms.sum(dim)
        if reduction == "sum":
            return -terms.sum()
        if log_p.numel() == 0:  # the mean of nothing
            return log_p.new_full((), math.nan)
        return -terms.sum() / math.prod(positions_shape(log_p))
    indices = target if target.dtype in NATIVE_INDEX_DTYPES else target.long()
    nll = F.nll_loss(log_p, indices, ignore_index=ignore_index, reduction=reduction)  # −log p_n,t_n
    if label_smoothing == 0:
        return nll
    uniform = (-log_p.sum(dim)).masked_fill_(target == ignore_index, 0.0)  # −Σ_c log p_nc, 0 where ignored
    if reduction == "mean":
        uniform = uniform.sum() / (target != ignore_index).sum()
    elif reduction == "sum":
        uniform = uniform.sum()
    return (1 - label_smoothing) * nll + uniform * per_class(label_smoothing, C)


# -- the backward -----------------------------------------------------------------------------


def scaled_index_distribution(
    s: torch.Tensor, target: torch.Tensor, classes: int, ignore_index: int, label_smoothing: float
) -> torch.Tensor:
    """s q for class-index targets: (N, C, d1, …).

    Chosen with ``where`` rather than multiplied, so that a row with nothing
    counted (ignored) stays exactly 0 whatever s is: native's gradient there is
    0 even where s = g / 0 when every target is ignored.
    """
    dim = 0 if target.dim() == 0 else 1
    class_index = torch.arange(classes, device=target.device).reshape(classes, *[1] * (target.dim() - 1))
    hot = target.unsqueeze(dim) == class_index  # t_n = c
    counted = (target != ignore_index).unsqueeze(dim)
    if label_smoothing == 0:
        return torch.where(hot & counted, s, 0)
    smooth = per_class(label_smoothing, classes)
    return torch.where(counted, torch.where(hot, s * (1 - label_smoothing + smooth), s * smooth), 0)


def cross_entropy_backward(
    g: torch.Tensor,
    z: torch.Tensor,
    target: torch.Tensor | None,
    probabilities: bool,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    need_z: bool,
    need_target: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂ℓ, the gradients (∂J/∂z, ∂J/∂q), each only when needed."""
    if not (need_z or need_target):
        return None, None
    dim = class_dim(z)
    C = z.shape[dim]
    log_p = F.log_softmax(z, dim)  # log p = z − logsumexp z: (N, C, d1, …)
    if reduction == "mean":  # s = g / count
        count = math.prod(positions_shape(z)) if probabilities else (target != ignore_index).sum()
        s = g / count
    else:  # s = g: a scalar for "sum", (N, d1, …) for "none"
        s = g.unsqueeze(dim) if reduction == "none" else g
    grad_z = grad_q = None
    if need_z:
        if probabilities:
            s_q = s * smoothed(target, label_smoothing, C)
        else:
            s_q = scaled_index_distribution(s, target, C, ignore_index, label_smoothing)
        total = s_q.sum(dim, keepdim=True)  # Σ_c s q_nc: (N, 1, d1, …)
        p = log_p.exp()
        # p Σ_c s q_c − s q, as one multiply-add (one rounding), the way native's log-softmax backward computes it.
        if products_in_place(g):  # the same arithmetic, into s q's buffer
            grad_z = s_q.neg_().addcmul_(p, total)
        else:
            grad_z = torch.addcmul(-s_q, p, total)
    if need_target:
        grad_q = -(s * log_p)  # −s log p
        if label_smoothing > 0:
            grad_q = grad_q * (1 - label_smoothing)  # through q' = (1 − ε) q + ε/C
    return grad_z, grad_q


class CrossEntropyFunction(HandDerivedFunction):
    r"""ℓ_n = −Σ_c q_nc log p_nc, log p_n = z_n − logsumexp_c z_nc, with the backward derived by hand.

    Given g = ∂J/∂ℓ and s = g · scale (scale = 1/count for "mean", 1 otherwise):

    - ∂J/∂z_n = p_n Σ_c s q_nc − s q_n     (= s (softmax(z_n) − y_n) for a one-hot y_n)
    - ∂J/∂q_n = −s log p_n · (1 − ε)       (class probabilities; class indices get no gradient)

    since ∂ log p_nc / ∂z_nk = [c = k] − p_nk. z and the target are saved, and
    log p is recomputed from z in the backward: the log p the forward computes
    is outside autograd, and the backward must stay differentiable (double
    backward) through p's dependence on z. The bytes saved are native's.

    The forward is native's composition of native operations, so ℓ has native's
    bits. The gradient's products and differences are native's, in its order,
    but not its exponential: native's log-softmax backward takes e^{log p} with
    its own vectorised exp, torch.exp with another (MKL's on x86), and about one
    element in ten differs in the last bit. For index targets without smoothing
    the gradient is otherwise native's to the bit (a test substitutes native's
    exponential to show it); with label smoothing native splits s q into an
    nll and a uniform term, and with probability targets it sums Σ_c in its
    kernel's order. Each agrees with native to rounding, within torchbp.compare's
    tolerance, in float32 and float64; float16 and bfloat16, which native's
    kernel carries in float32, agree to their rounding.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int, label_smoothing: float
    ) -> torch.Tensor:
        check_cross_entropy(input, target, reduction, ignore_index, label_smoothing)
        if not target.is_floating_point() and not (torch.compiler.is_compiling() or transforms_active()):
            check_class_indices(target, input.shape[class_dim(input)], ignore_index)
        log_p = F.log_softmax(input, class_dim(input))
        return cross_entropy_from_log_p(log_p, target, reduction, ignore_index, label_smoothing)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, target, ctx.reduction, ctx.ignore_index, ctx.label_smoothing = inputs
        ctx.probabilities = target.is_floating_point()
        need_z = ctx.needs_input_grad[0]
        # p needs z; s q needs the target, and only ∂J/∂z reads s q.
        ctx.save_for_backward(z, target if need_z else None)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        z, target = ctx.saved_tensors
        need_z, need_target = ctx.needs_input_grad[:2]
        grads = cross_entropy_backward(
            g, z, target, ctx.probabilities, ctx.reduction, ctx.ignore_index, ctx.label_smoothing, need_z, need_target
        )
        return (*grads, None, None, None)
