"""Scaled dot-product attention O = softmax(Q Kᵀ/√E + B) V: its Function, checks and functional form."""

from __future__ import annotations

import math
from typing import Any

import torch

from torchbp import autocast
from torchbp.hand_derived import HandDerivedFunction, products_in_place, running_eagerly
from torchbp.layers.dropout import drop, times_factor, validate_probability
from torchbp.layers.softmax import softmax_backward
from torchbp.table import Operation, register_operation
from torchbp.validation import ArgumentError, ShapeError, shape_text, validate_floating_and_matching


def validate_attention(
    query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: float, is_causal: bool, enable_gqa: bool
) -> None:
    """Q (…, L, E), K (…, L′, E), V (…, L′, Ev) of one floating dtype and device, with one batch or batches that
    broadcast (K and V may have fewer heads, dimension −3, under ``enable_gqa``); a mask broadcastable to
    (…, L, L′)."""
    validate_floating_and_matching("scaled_dot_product_attention", query=query, key=key, value=value)
    validate_probability(dropout_p)
    if query.dim() < 2 or key.dim() < 2 or value.dim() != key.dim():
        raise ShapeError(
            f"scaled_dot_product_attention: expected query (…, L, E), key (…, S, E) and value (…, S, Ev), key and "
            f"value with the same number of dimensions, got {shape_text(query)}, {shape_text(key)} and "
            f"{shape_text(value)}"
        )
    if key.shape[-1] != query.shape[-1] or value.shape[-2] != key.shape[-2] or key.shape[:-2] != value.shape[:-2]:
        raise ShapeError(
            f"scaled_dot_product_attention: expected key (…, S, E) to match query's E and value (…, S, Ev) "
            f"key's S, got query {shape_text(query)}, key {shape_text(key)}, value {shape_text(value)}"
        )
    heads, kv_heads = heads_of(query), heads_of(key)
    if enable_gqa and heads != kv_heads:
        one_batch = query.shape[:-3] == key.shape[:-3] and heads % kv_heads == 0
    else:
        one_batch = broadcastable(query.shape[:-2], key.shape[:-2])
    if not one_batch:
        raise ShapeError(
            f"scaled_dot_product_attention: expected query, key and value of one batch, or batches that "
            f"broadcast (key and value may have a divisor of query's heads with enable_gqa=True), got query "
            f"{shape_text(query)} and key {shape_text(key)}"
        )
    if attn_mask is not None:
        if is_causal:
            raise ArgumentError("scaled_dot_product_attention: expected attn_mask or is_causal=True, not both")
        target = (*query.shape[:-1], key.shape[-2])
        try:
            attn_mask.expand(target)  # a view: refused unless the mask broadcasts to (…, L, L′)
        except RuntimeError:
            raise ShapeError(
                f"scaled_dot_product_attention: expected attn_mask broadcastable to {target} (…, L, S), got "
                f"{shape_text(attn_mask)}"
            ) from None
        if attn_mask.dtype != torch.bool:
            validate_floating_and_matching("scaled_dot_product_attention", query=query, attn_mask=attn_mask)


def broadcastable(*shapes: torch.Size) -> bool:
    try:
        torch.broadcast_shapes(*shapes)  # type: ignore[no-untyped-call]
    except RuntimeError:
        return False
    return True


def heads_of(t: torch.Tensor) -> int:
    """Q's, K's or V's number of heads, its dimension −3; 1 for one sequence, (L, E)."""
    return t.shape[-3] if t.dim() >= 3 else 1


def scale_of(query: torch.Tensor, scale: float | None) -> float:
    """The scale that stands for 1/√E: the given one, or 1/√E itself."""
    return 1 / math.sqrt(query.shape[-1]) if scale is None else scale


def grouped(t: torch.Tensor, heads: int) -> torch.Tensor:
    """K or V with each of its heads repeated for the query heads it serves (enable_gqa), as a copy; as it is
    where it has as many heads, or more (Q's batch broadcast against it)."""
    if t.dim() < 3 or t.shape[-3] >= heads:
        return t
    return t.repeat_interleave(heads // t.shape[-3], dim=-3)


def summed_over_groups(grad: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """The gradient of a repeated K or V: each head's copies summed back into it."""
    if grad.dim() < 3 or grad.shape[-3] == kv_heads:
        return grad
    return grad.reshape(*grad.shape[:-3], kv_heads, grad.shape[-3] // kv_heads, *grad.shape[-2:]).sum(-3)


def scaled(product: torch.Tensor, s: float, in_place: bool) -> torch.Tensor:
    """product times the scale ``s``, into the product (a new tensor) with ``in_place``."""
    return product.mul_(s) if in_place else product * s


def own_shape(grad: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor | None:
    """Q's, K's or V's gradient summed back over the batch dimensions along which it was broadcast."""
    return grad if grad is None or grad.shape == t.shape else grad.sum_to_size(t.shape)


def reduced_to(grad: torch.Tensor, broadcast: tuple[bool, ...]) -> torch.Tensor:
    """A gradient of a broadcast tensor summed back to the tensor's own shape: over the leading dimensions the
    tensor lacks, and over those where it has size 1 (``broadcast``, one flag per dimension of its own)."""
    extra = grad.dim() - len(broadcast)
    dims = tuple(range(extra)) + tuple(i + extra for i, flag in enumerate(broadcast) if flag)
    if not dims:
        return grad
    summed = grad.sum(dims, keepdim=True)
    return summed.reshape(summed.shape[extra:])


class ScaledDotProductAttentionFunction(HandDerivedFunction):
    r"""O = P V, P = softmax(S) over the keys, S = Q Kᵀ/√E + B, with the backward derived by hand.

    a given ``scale`` replaces 1/√E; B is 0, −∞ where a boolean mask is False or above the diagonal
    (``is_causal``), or the additive mask itself. Given G = ∂J/∂O:

    - ∂J/∂V = Pᵀ G
    - ∂J/∂P = G Vᵀ
    - ∂J/∂S = P ⊙ (∂J/∂P − Σ_keys ∂J/∂P ⊙ P)       (the softmax's Jacobian-vector product, softmax_backward)
    - ∂J/∂Q = ∂J/∂S K/√E,  ∂J/∂K = (∂J/∂S)ᵀ Q/√E
    - ∂J/∂B = ∂J/∂S, summed over the dimensions an additive mask was broadcast along

    With ``dropout_p`` the weights are dropped as native's math path drops them, P_d = P ⊙ m / (1 − p)
    with m drawn as native's dropout draws it (so both sides of a comparison draw alike), and O = P_d V:
    then ∂J/∂V = P_dᵀ G and ∂J/∂P = (G Vᵀ) ⊙ m / (1 − p).

    A query row whose keys are all masked gets P = 0 and O = 0, as native's; its gradients
    are 0. With ``enable_gqa`` each K and V head serves a group of query heads, and its
    gradient sums the group's. Saved: Q, K, V and P (native's math path saves the same). Like
    native's math path, ``apply`` returns O and P; P is differentiable, so a gradient arriving
    at it (when the backward is differentiated) joins G Vᵀ, and double backward works.
    ``ScaledDotProductAttentionFunction.apply(query, key, value, attn_mask, dropout_p, is_causal, scale,
    enable_gqa)`` returns O, P and the dropout's factor (1 without dropout; not differentiable);
    gradients agree with native's to rounding.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None,
        dropout_p: float,
        is_causal: bool,
        scale: float | None,
        enable_gqa: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        validate_attention(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
        s, heads = scale_of(query, scale), heads_of(query)
        with torch.autocast(query.device.type, enabled=False):  # in the inputs' dtype, as native's kernel runs
            scores = query @ grouped(key, heads).transpose(-2, -1)
            own = running_eagerly()  # nothing batches the new scores: the mask and scale go into them in place
            scores = (scores.mul_ if own else scores.mul)(s)  # S = Q Kᵀ/√E: (…, L, L′)
            if is_causal:
                above = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
                scores = (scores.masked_fill_ if own else scores.masked_fill)(above, -math.inf)
            elif attn_mask is not None and attn_mask.dtype == torch.bool:
                scores = (scores.masked_fill_ if own else scores.masked_fill)(~attn_mask, -math.inf)
            elif attn_mask is not None:
                scores = (scores.add_ if own else scores.add)(attn_mask)
            p = torch.softmax(scores, -1)
            all_masked = scores.amax(-1, keepdim=True) == -math.inf  # a row whose every key is masked: P = 0
            if not running_eagerly() or bool(all_masked.any()):  # (read eagerly: most batches have none)
                p = torch.where(all_masked, 0, p)
            if dropout_p > 0:
                dropped, factor = drop(p, dropout_p)  # P_d = P ⊙ m / (1 − p)
                return dropped @ grouped(value, heads), p, factor
            return p @ grouped(value, heads), p, p.new_ones(())

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        query, key, value, attn_mask, dropout_p, _, scale, _ = inputs
        ctx.set_materialize_grads(False)  # P's gradient is None, not zeros, where it takes no part in J
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(query, key, value, output[1], output[2] if dropout_p > 0 else None)
        ctx.dropout_p = dropout_p
        ctx.scale = scale_of(query, scale)
        # which dimensions an additive mask was broadcast along (flags, not its sizes: the compiler's may be symbols)
        additive = attn_mask is not None and attn_mask.dtype != torch.bool
        ctx.mask_broadcast = tuple(size == 1 for size in attn_mask.shape) if additive else None

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, g_p: torch.Tensor | None, _: Any) -> tuple[torch.Tensor | None, ...]:
        """G = ∂J/∂O, and ∂J/∂P from outside where P reaches J another way (a differentiated backward reads it)."""
        query, key, value, p, factor = ctx.saved_tensors
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        heads, kv_heads = heads_of(query), heads_of(key)
        k, v = grouped(key, heads), grouped(value, heads)
        dropped = p if factor is None else times_factor(p, factor, ctx.dropout_p)  # P_d (P without dropout)
        grad_v = summed_over_groups(dropped.transpose(-2, -1) @ g, kv_heads) if need_v and g is not None else None
        grad_v = own_shape(grad_v, value)
        grad_p = None if g is None else g @ v.transpose(-2, -1)  # ∂J/∂P_d = G Vᵀ
        if grad_p is not None and factor is not None:
            grad_p = times_factor(grad_p, factor, ctx.dropout_p)  # ∂J/∂P = ∂J/∂P_d ⊙ m / (1 − p)
        if g_p is not None:
            grad_p = g_p if grad_p is None else grad_p + g_p
        if grad_p is None or not (need_q or need_k or need_mask):
            return None, None, grad_v, None, None, None, None, None
        grad_scores = softmax_backward(grad_p, p, -1)  # P ⊙ (∂J/∂P − Σ ∂J/∂P ⊙ P)
        own = products_in_place(g if g is not None else grad_p)  # the products below are new: scaled in place
        grad_q = scaled(grad_scores @ k, ctx.scale, own) if need_q else None  # ∂J/∂S K/√E
        grad_k = (
            summed_over_groups(scaled(grad_scores.transpose(-2, -1) @ query, ctx.scale, own), kv_heads)
            if need_k
            else None
        )
        grad_mask = reduced_to(grad_scores, ctx.mask_broadcast) if need_mask and ctx.mask_broadcast else None
        return own_shape(grad_q, query), own_shape(grad_k, key), grad_v, grad_mask, None, None, None, None


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """softmax(Q Kᵀ/√E + B) V, as torch.nn.functional.scaled_dot_product_attention, backward by
    ScaledDotProductAttentionFunction. ``dropout_p`` drops the weights as native's math path does, drawing
    alike. Under ``torch.autocast`` it runs in the autocast dtype, as the native one does."""
    if autocast.any_enabled() and isinstance(query, torch.Tensor):  # one cheap call when autocast is off
        float_mask = attn_mask if isinstance(attn_mask, torch.Tensor) and attn_mask.is_floating_point() else None
        query, key, value, cast_mask = autocast.cast_as_autocast_would(
            autocast.LOWER_PRECISION, query, key, value, float_mask
        )
        attn_mask = attn_mask if float_mask is None else cast_mask
    output, _, _ = ScaledDotProductAttentionFunction.apply(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
    )
    return output  # type: ignore[no-any-return]


register_operation(Operation(ScaledDotProductAttentionFunction, scaled_dot_product_attention))
