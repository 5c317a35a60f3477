"""The cross-entropy loss of logits, ℓ_n = −Σ_c y_nc log p_nc: its Function, checks, functional form and module.

Index letters: c runs over the C classes (dimension 1 of z, or 0 for an unbatched
z of shape (C,)); n over samples and positions, that is every other dimension
(N, d1, …). z are the logits, log p_n = z_n − logsumexp_c z_nc their log-softmax,
and y_n the target distribution: the one-hot vector of the class index t_n (all
zero where t_n = ignore_index), or the given class probabilities. Label
smoothing α mixes it with the uniform distribution, (1 − α) y_n + α/C.
Class weights w (C,), where given, weigh each class's term: ℓ_n = −Σ_c w_c y_nc log p_nc
(w_{t_n} times the unweighted loss for a one-hot y), and 1 where not given.
ℓ is reduced as native torch reduces it: "mean" divides the sum by the count of
targets (index targets: those not ignored, each counted w_{t_n} times, so by
Σ_n w_{t_n}; probabilities: every n, unweighted), "sum" sums, "none" keeps ℓ_n.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn import _reduction

from torchbp import autocast
from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule, products_in_place, running_eagerly
from torchbp.layers.log_softmax import log_softmax_backward
from torchbp.table import Layer, register
from torchbp.validation import (
    FLOATING,
    ArgumentError,
    ClassIndexError,
    DeviceError,
    DTypeError,
    ShapeError,
    validate_floating_and_matching,
    validate_reduction,
)

INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
NATIVE_INDEX_DTYPES = (torch.int64, torch.uint8)  # what native nll_loss reads; the others are widened to int64


def class_dim(z: torch.Tensor) -> int:
    return 0 if z.dim() == 1 else 1


def positions_shape(z: torch.Tensor) -> torch.Size:
    """(N, d1, …): z's shape without its class dimension, the shape of an index target and of ℓ."""
    dim = class_dim(z)
    return z.shape[:dim] + z.shape[dim + 1 :]


# -- input checks ----------------------------------------------------------------------------


def validate_cross_entropy(
    input: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int, label_smoothing: float
) -> None:
    """A floating-point input of shape (C,), (N, C) or (N, C, d1, …); a target of class indices
    (an integer dtype, shape (N, d1, …)) or of class probabilities (the input's shape, dtype and
    device); a known reduction; label_smoothing in [0, 1]."""
    validate_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ArgumentError(f"cross_entropy: expected label_smoothing in [0, 1], got {label_smoothing}")
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and input.dtype in FLOATING
        and input.dim() > 0
        and target.device == input.device
        and (
            (target.dtype in INDEX_DTYPES and target.shape == positions_shape(input))
            or (target.dtype == input.dtype and target.shape == input.shape and ignore_index < 0)
        )
    ):
        return
    validate_floating_and_matching("cross_entropy", input=input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"cross_entropy: expected target to be a torch.Tensor, got {type(target).__name__}")
    if input.dim() == 0:
        raise ShapeError("cross_entropy: expected input of shape (C,), (N, C) or (N, C, d1, ...), got ()")
    if target.is_floating_point():
        validate_floating_and_matching("cross_entropy", input=input, target=target)
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
        raise DeviceError(
            f"cross_entropy: expected target on the device of input ({input.device}), got {target.device}"
        )
    if target.shape != positions_shape(input):
        raise ShapeError(
            f"cross_entropy: expected a target of class indices of shape {tuple(positions_shape(input))} for input "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )


def validate_class_weights(input: torch.Tensor, weight: torch.Tensor | None) -> None:
    """None, or a floating-point (C,) tensor of the input's dtype and device that needs no gradient."""
    if weight is None:
        return
    classes = input.shape[class_dim(input)]
    if (
        isinstance(weight, torch.Tensor)
        and weight.dtype == input.dtype
        and weight.device == input.device
        and weight.shape == (classes,)
        and not (weight.requires_grad and torch.is_grad_enabled())
    ):
        return
    validate_floating_and_matching("cross_entropy", input=input, weight=weight)
    if weight.shape != (classes,):
        raise ShapeError(
            f"cross_entropy: expected weight of shape ({classes},), one per class of input {tuple(input.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    raise NotImplementedError(
        "cross_entropy: class weights that require grad get no gradient here, nor in native torch (which raises in "
        "the backward): pass weight.detach(), or register it as a buffer"
    )


def validate_class_indices(target: torch.Tensor, classes: int, ignore_index: int) -> None:
    """Every class index lies in [0, C) or equals ignore_index.

    This reads the target's values, so it runs eagerly only. Under torch.func and
    torch.compile the forward's nll_loss refuses such an index itself (vmap's
    gather, native's kernel with aot_eager, inductor's bounds check), so no
    gradient is ever computed from one.
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
    """α/C, as native's C++ divides: α/0 is ∞ (a loss over no classes is then NaN, as native's)."""
    return label_smoothing / classes if classes else math.inf


def smoothed(q: torch.Tensor, label_smoothing: float, classes: int) -> torch.Tensor:
    """(1 − α) y + α/C, in native's order of operations."""
    return q * (1 - label_smoothing) + per_class(label_smoothing, classes) if label_smoothing > 0 else q


def along_classes(weight: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """w as (1, C, 1, …): broadcast along log p's class dimension."""
    shape = [1] * log_p.dim()
    shape[class_dim(log_p)] = weight.shape[0]
    return weight.view(shape)


def counted_targets(target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None, select: bool) -> torch.Tensor:
    """The mean's count of class-index targets: those not ignored, or with class weights Σ_n w_{t_n} over them.
    With ``select``, the weights from the counted targets alone, as native's forward selects them (its sum's
    bits); else with the ignored ones as zeros, which works where a selection's size cannot depend on values
    (torch.func, torch.compile, and a backward, which a transform's tensors may reach with the transform no
    longer on the stack)."""
    counted = target != ignore_index
    if weight is None:
        return counted.sum()
    if select:
        return weight[target[counted].long()].sum()
    weights = weight.gather(0, torch.where(counted, target, 0).long().reshape(-1))  # w_{t_n}, w_0 where ignored
    return torch.where(counted.reshape(-1), weights, 0).sum()


def cross_entropy_from_log_p(
    log_p: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """ℓ from log p, composed of the native operations native cross_entropy composes, so with its bits."""
    dim = class_dim(log_p)
    C = log_p.shape[dim]
    if target.is_floating_point():
        terms = log_p * smoothed(target, label_smoothing, C)  # y_nc log p_nc
        if weight is not None:
            terms = terms * along_classes(weight, log_p)  # w_c y_nc log p_nc
        if reduction == "none":
            return -terms.sum(dim)
        if reduction == "sum":
            return -terms.sum()
        if log_p.numel() == 0:  # the mean of nothing
            return log_p.new_full((), math.nan)
        return -terms.sum() / math.prod(positions_shape(log_p))
    indices = target if target.dtype in NATIVE_INDEX_DTYPES else target.long()
    nll = F.nll_loss(log_p, indices, weight, ignore_index=ignore_index, reduction=reduction)  # −w_t log p_n,t_n
    if label_smoothing == 0:
        return nll
    weighted = log_p if weight is None else log_p * along_classes(weight, log_p)
    uniform = (-weighted.sum(dim)).masked_fill_(target == ignore_index, 0.0)  # −Σ_c w_c log p_nc, 0 where ignored
    if reduction == "mean":
        uniform = uniform.sum() / counted_targets(target, ignore_index, weight, running_eagerly())
    elif reduction == "sum":
        uniform = uniform.sum()
    return (1 - label_smoothing) * nll + uniform * per_class(label_smoothing, C)


# -- the backward -----------------------------------------------------------------------------


def every_target_counted(target: torch.Tensor, ignore_index: int, g: torch.Tensor) -> bool:
    """Is no class index ignore_index? Read from the target (a comparison and a synchronisation, about
    5 µs), so asked only where the backward runs eagerly on the CPU (see products_in_place), where it
    spares the masks of ignored targets; elsewhere the answer is False, and the masks are applied."""
    return target.is_cpu and products_in_place(g) and not bool((target == ignore_index).any())


def one_hot_times(c: torch.Tensor, target: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """c y where y is one-hot at t_n (no target ignored, no smoothing): c at the target class, 0 elsewhere."""
    dim = class_dim(log_p)
    index = target.unsqueeze(dim)  # (N, 1, d1, …)
    return torch.zeros_like(log_p).scatter_(dim, index.long(), c.expand(index.shape))


def index_distribution_times(
    c: torch.Tensor,
    target: torch.Tensor,
    log_p: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    every_counted: bool = False,
) -> torch.Tensor:
    """c y for class-index targets, of log p's shape (N, C, d1, …); c a scalar or (N, 1, d1, …).

    y is 1 − α + α/C at the target class and α/C at the others, scattered into
    place: an ignored target's row is written as exactly 0 rather than
    multiplied by 0, so it stays 0 whatever c is (native's gradient there is 0
    even where λ = g / 0, every target being ignored). ``every_counted`` (no
    target is ignore_index, see :func:`every_target_counted`) skips the masks.
    """
    dim = class_dim(log_p)
    if log_p.shape[dim] == 0:  # no classes: every target is ignored, and there is nowhere to scatter
        return torch.zeros_like(log_p)
    if every_counted and label_smoothing == 0:
        return one_hot_times(c, target, log_p)
    counted = (target != ignore_index).unsqueeze(dim)  # (N, 1, d1, …)
    index = torch.where(counted, target.unsqueeze(dim), 0).long()  # t_n, any class where ignored
    if label_smoothing == 0:
        return torch.zeros_like(log_p).scatter(dim, index, torch.where(counted, c, 0))
    smooth = per_class(label_smoothing, log_p.shape[dim])
    everywhere = torch.where(counted, c * smooth, 0).expand(log_p.shape)
    return everywhere.scatter(dim, index, torch.where(counted, c * (1 - label_smoothing + smooth), 0))


def through_log_softmax(u: torch.Tensor, log_p: torch.Tensor, in_place: bool) -> torch.Tensor:
    """∂J/∂z from u = ∂J/∂log p: u − p Σ_c u_c, since ∂ log p_c/∂z_k = [c = k] − p_k: the log-softmax's
    backward (:func:`torchbp.layers.log_softmax.log_softmax_backward`) over the class dimension.
    ``in_place`` writes it into u, a temporary of the caller's."""
    return log_softmax_backward(u, log_p, class_dim(log_p), in_place)


def cross_entropy_backward(
    g: torch.Tensor | None,
    g_log_p: torch.Tensor | None,
    log_p: torch.Tensor,
    target: torch.Tensor | None,
    probabilities: bool,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    need_z: bool,
    need_target: bool,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂ℓ and g_log_p = ∂J/∂(log p) from outside (None: ℓ alone reaches J), the gradients
    (∂J/∂z, ∂J/∂y), each only when needed; log p is the forward's, w the class weights (None: all 1)."""
    if not (need_z or need_target) or (g is None and g_log_p is None):
        return None, None
    dim = class_dim(log_p)
    C = log_p.shape[dim]
    if g is None:  # ℓ takes no part in J: log p's own gradient alone
        assert g_log_p is not None
        return (through_log_softmax(g_log_p, log_p, in_place=False) if need_z else None), None
    every_counted = not probabilities and need_z and every_target_counted(target, ignore_index, g)  # type: ignore[arg-type]  # saved when ∂J/∂z is needed
    if reduction == "mean":  # λ = g / count
        if probabilities or (every_counted and weight is None):
            count: int | torch.Tensor = math.prod(positions_shape(log_p))
        else:
            assert target is not None  # saved whenever ∂J/∂z is needed, as it is for class indices
            count = counted_targets(target, ignore_index, weight, select=False)
        minus_s = -(g / count)
    else:  # λ = g: a scalar for "sum", (N, 1, d1, …) for "none"
        minus_s = -(g.unsqueeze(dim) if reduction == "none" else g)
    grad_z = grad_q = None
    if need_z:
        assert target is not None  # saved whenever ∂J/∂z is needed
        if probabilities:
            u = minus_s * smoothed(target, label_smoothing, C)  # ∂J/∂log p = −λ y: ℓ is linear in log p
        else:
            u = index_distribution_times(minus_s, target, log_p, ignore_index, label_smoothing, every_counted)
        if weight is not None:  # ∂J/∂log p = −λ w ⊙ y
            u = u * along_classes(weight, log_p)
        if g_log_p is not None:  # log p reaches J by another way too (a differentiated backward reads it)
            u = u + g_log_p
        grad_z = through_log_softmax(u, log_p, in_place=products_in_place(g))  # p Σ_c λ y_c − λ y
    if need_target:
        if weight is None:
            grad_q = minus_s * log_p  # −λ log p
        else:
            grad_q = minus_s * along_classes(weight, log_p) * log_p  # −λ w ⊙ log p, in native's order
        if label_smoothing > 0:
            grad_q = grad_q * (1 - label_smoothing)  # through y' = (1 − α) y + α/C
    return grad_z, grad_q


class CrossEntropyFunction(HandDerivedFunction):
    r"""ℓ_n = −Σ_c y_nc log p_nc, log p_n = z_n − logsumexp_c z_nc, with the backward derived by hand.

    Given g = ∂J/∂ℓ and λ = g/count for "mean" (λ = g otherwise), and
    class weights w (all 1 without ``weight``; the mean's count then Σ_n w_{t_n}):

    - ∂J/∂log p_n = −λ w ⊙ y_n, ℓ being linear in log p; through the log-softmax,
      ∂ log p_nc/∂z_nk = [c = k] − p_nk, so
    - ∂J/∂z_n = p_n Σ_c λ w_c y_nc − λ w ⊙ y_n     (= λ (p_n − y_n) for a one-hot y_n, w = 1)
    - ∂J/∂y_n = −λ w ⊙ log p_n · (1 − α)           (class probabilities; class indices get no gradient)

    Like native's log_softmax and nll_loss, ``apply`` returns ℓ and log p, and
    saves log p and the target, native's bytes: log p is an output, so the
    backward reads it without a second log-softmax and stays differentiable
    (double backward) through p's dependence on z. A gradient ∂J/∂log p
    arriving at that output (as it does when the backward is differentiated)
    joins −λ y before the log-softmax: ∂J/∂log p = −λ y + ∂J/∂log p from
    outside. :func:`cross_entropy` returns ℓ alone, as F.cross_entropy.

    The forward is native's composition of native operations, so ℓ has native's
    bits. The backward is native's arithmetic in native's order, p Σ − λ y in one
    multiply-add as native's kernel, except e^{log p}: native's kernel takes it
    with its own vectorised exp, torch.exp with another (MKL's on x86), and
    about one element in ten differs in its last bit. Index targets without
    smoothing are otherwise native's to the bit (a test substitutes native's
    exponential to show it); with smoothing native adds λ y as two terms (nll
    and uniform), and for probability targets sums Σ_c in its kernel's order.
    With class weights and a mean, native's kernel sums the count Σ_n w_{t_n}
    in an order of its own, so that scale agrees to rounding too.
    So gradients agree with native to rounding, within torchbp.compare's
    tolerance in float32 and float64, and to their rounding in float16 and
    bfloat16, which native's kernel carries in float32. Where p_t ≈ 1 for every
    sample, the gradient p_t λ − λ is small against λ, and a last bit of p is
    large against it: compare those with a larger rtol.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        target: torch.Tensor,
        reduction: str,
        ignore_index: int,
        label_smoothing: float,
        weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        validate_cross_entropy(input, target, reduction, ignore_index, label_smoothing)
        validate_class_weights(input, weight)
        if not target.is_floating_point() and running_eagerly():
            validate_class_indices(target, input.shape[class_dim(input)], ignore_index)
        log_p = F.log_softmax(input, class_dim(input))
        return cross_entropy_from_log_p(log_p, target, reduction, ignore_index, label_smoothing, weight), log_p

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        _, target, ctx.reduction, ctx.ignore_index, ctx.label_smoothing, weight = inputs
        ctx.probabilities = target.is_floating_point()
        ctx.set_materialize_grads(False)  # log p's gradient is None, not zeros, where it takes no part in J
        # p and log p are read from log p; λ y needs the target, and only ∂J/∂z reads λ y; both read w.
        ctx.save_for_backward(output[1], target if ctx.needs_input_grad[0] else None, weight)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, g_log_p: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        log_p, target, weight = ctx.saved_tensors
        need_z, need_target = ctx.needs_input_grad[:2]
        grads = cross_entropy_backward(
            g,
            g_log_p,
            log_p,
            target,
            ctx.probabilities,
            ctx.reduction,
            ctx.ignore_index,
            ctx.label_smoothing,
            need_z,
            need_target,
            weight,
        )
        return (*grads, None, None, None, None)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of logits, as torch.nn.functional.cross_entropy, backward by CrossEntropyFunction.

    Class-index and class-probability targets, class weights (``weight=``), ``ignore_index`` and
    ``label_smoothing`` as native. Under ``torch.autocast`` it runs in float32, as the native one does.
    """
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if autocast.any_enabled() and isinstance(input, torch.Tensor):
        (input,) = autocast.cast_as_autocast_would(autocast.FLOAT32, input)
        if target.is_floating_point():
            (target,) = autocast.cast_as_autocast_would(autocast.FLOAT32, target)
        if weight is not None:
            (weight,) = autocast.cast_as_autocast_would(autocast.FLOAT32, weight)
    loss, _ = CrossEntropyFunction.apply(input, target, reduction, ignore_index, label_smoothing, weight)  # ℓ, log p
    return loss  # type: ignore[no-any-return]


class CrossEntropyLoss(HandDerivedModule, torch.nn.CrossEntropyLoss):
    r"""torch.nn.CrossEntropyLoss whose backward is :class:`CrossEntropyFunction`.

    .. math:: \ell_n = -\sum_c y_{nc} \log \operatorname{softmax}(z_n)_c, \qquad
              \partial \ell_n / \partial z_n = \operatorname{softmax}(z_n) \textstyle\sum_c y_{nc} - y_n

    Args:
        weight, ignore_index, reduction, label_smoothing, size_average, reduce: as torch.nn.CrossEntropyLoss.

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, \dots)` logits.
        - Target: class indices of the input's shape without C, or class probabilities of the input's shape.
        - Output: a scalar, or the target's shape without C with ``reduction="none"``.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


register(Layer(torch.nn.CrossEntropyLoss, CrossEntropyLoss, CrossEntropyFunction, cross_entropy))
