"""Multi-head attention built on the hand-derived Linear and attention: its functional form and module."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from torchbp.hand_derived import HandDerivedModule
from torchbp.layers.attention import ScaledDotProductAttentionFunction, scaled_dot_product_attention
from torchbp.layers.dropout import times_factor
from torchbp.layers.linear import linear
from torchbp.table import Layer, register
from torchbp.validation import ShapeError, shape_text


def refuse_unsupported(bias_k: Any, add_zero_attn: bool) -> None:
    if bias_k is not None or add_zero_attn:
        raise NotImplementedError(
            "torchbp multi-head attention: add_bias_kv and add_zero_attn are not hand-derived here; "
            "torchbp.convert leaves such a MultiheadAttention native"
        )


def merged_mask(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, n: int, heads: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """One additive mask for scaled_dot_product_attention, (L, S) or (N, H, L, S): native's convention, a True
    entry (or −∞) masks a key out. attn_mask is (L, S) or (N·H, L, S); key_padding_mask (N, S)."""
    attn = F._canonical_mask(
        mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=dtype, check_other=False
    )
    other = F._none_or_dtype(attn_mask)
    padding = F._canonical_mask(
        mask=key_padding_mask, mask_name="key_padding_mask", other_type=other, other_name="attn_mask", target_type=dtype
    )
    if attn is not None and attn.dim() == 3:
        attn = attn.view(n, heads, *attn.shape[-2:])
    if padding is None:
        return attn
    padding = padding.view(n, 1, 1, padding.shape[-1])
    return padding if attn is None else attn + padding


def multi_head_attention_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: torch.Tensor | None,
    in_proj_bias: torch.Tensor | None,
    bias_k: torch.Tensor | None,
    bias_v: torch.Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    training: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: torch.Tensor | None = None,
    k_proj_weight: torch.Tensor | None = None,
    v_proj_weight: torch.Tensor | None = None,
    static_k: torch.Tensor | None = None,
    static_v: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As torch.nn.functional.multi_head_attention_forward (sequence first: (L, N, E), or (L, E) unbatched),
    every product hand-derived: the in-projections and out-projection by LinearFunction, the attention by
    ScaledDotProductAttentionFunction.

    Q = query W_qᵀ + b_q, K and V likewise; each of the H heads attends over its E/H columns; the heads'
    outputs side by side go through the out-projection. The attention weights returned with
    ``need_weights`` are the attention's own P (averaged over the heads with ``average_attn_weights``).
    ``dropout_p`` drops the attention's weights in training, drawing as native does. ``bias_k``/``bias_v``,
    ``add_zero_attn`` and ``static_k``/``static_v`` are refused (NotImplementedError); ``is_causal`` needs
    ``attn_mask``, the causal mask itself, as natively.
    """
    refuse_unsupported(bias_k, add_zero_attn)
    if static_k is not None or static_v is not None:
        raise NotImplementedError("torchbp multi-head attention: static_k and static_v are not hand-derived here")
    if is_causal and attn_mask is None:
        raise RuntimeError("multi_head_attention_forward: is_causal needs attn_mask, the causal mask itself")
    batched = query.dim() == 3
    if not batched:  # (L, E): one sequence
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    length, n, embed_dim = query.shape
    if embed_dim != embed_dim_to_check or embed_dim % num_heads:
        raise ShapeError(
            f"multi_head_attention_forward: expected query (L, N, {embed_dim_to_check}) with an embedding that "
            f"{num_heads} heads divide, got {shape_text(query)}"
        )
    if use_separate_proj_weight:
        b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        q, k, v = linear(query, q_proj_weight, b_q), linear(key, k_proj_weight, b_k), linear(value, v_proj_weight, b_v)  # type: ignore[arg-type]
    elif query is key and key is value:  # self-attention: one product with the packed weight
        q, k, v = linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)  # type: ignore[arg-type]
    else:
        w_q, w_k, w_v = in_proj_weight.chunk(3)  # type: ignore[union-attr]
        b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        q, k, v = linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)

    def heads(t: torch.Tensor) -> torch.Tensor:  # (L, N, E) -> (N, H, L, E/H)
        return t.reshape(t.shape[0], n, num_heads, embed_dim // num_heads).permute(1, 2, 0, 3)

    mask = merged_mask(attn_mask, key_padding_mask, n, num_heads, query.dtype)
    dropout_p = dropout_p if training else 0.0
    if need_weights:  # the weights are P dropped, as native's
        output, p, factor = ScaledDotProductAttentionFunction.apply(
            heads(q), heads(k), heads(v), mask, dropout_p, False, None, False
        )
        p = times_factor(p, factor, dropout_p)
    else:
        output, p = scaled_dot_product_attention(heads(q), heads(k), heads(v), mask, dropout_p), None
    output = linear(output.permute(2, 0, 1, 3).reshape(length, n, embed_dim), out_proj_weight, out_proj_bias)
    weights = None if p is None else (p.mean(1) if average_attn_weights else p)
    if not batched:
        output, weights = output.squeeze(1), None if weights is None else weights.squeeze(0)
    return output, weights


class MultiheadAttention(HandDerivedModule, torch.nn.MultiheadAttention):
    r"""torch.nn.MultiheadAttention whose every product is hand-derived: in- and out-projections by
    :class:`~torchbp.layers.linear.LinearFunction`, attention by
    :class:`~torchbp.layers.attention.ScaledDotProductAttentionFunction`.

    Args:
        embed_dim, num_heads, bias, kdim, vdim, batch_first, device, dtype: as torch.nn.MultiheadAttention's
            (the same parameters, initialization and state_dict keys).
        dropout: as native's: the attention's weights dropped in training, drawn as native draws them.
        add_bias_kv, add_zero_attn: refused here, at construction (NotImplementedError), unless False;
            ``torchbp.convert`` leaves such a MultiheadAttention native.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        refuse_unsupported(self.bias_k, self.add_zero_attn)

    def forward(  # the native signature, its defaults included
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.batch_first and query.dim() == 3:  # (N, L, E) -> (L, N, E), as native's module does
            same_kv, same_qk = key is value, query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        output, weights = multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, use_separate_proj_weight=not self._qkv_same_embed_dim,
            q_proj_weight=self.q_proj_weight, k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip
        if self.batch_first and query.dim() == 3:
            output = output.transpose(0, 1)
        return output, weights


def supported(module: torch.nn.MultiheadAttention) -> bool:
    return module.bias_k is None and not module.add_zero_attn


register(
    Layer(
        torch.nn.MultiheadAttention,
        MultiheadAttention,
        ScaledDotProductAttentionFunction,
        multi_head_attention_forward,
        runs=supported,
    )
)
