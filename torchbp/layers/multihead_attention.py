"""Multi-head attention built on the hand-derived Linear and attention: its functional form and module."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from torchbp.hand_derived import HandDerivedModule
from torchbp.layers.attention import ScaledDotProductAttentionFunction, scaled_dot_product_attention
from torchbp.layers.dropout import times_factor
from torchbp.layers.linear import (
    linear,
    per_sample_bias_grads,
    per_sample_weight_grad_norms_squared,
    per_sample_weight_grads,
)
from torchbp.table import Layer, register
from torchbp.validation import ShapeError, shape_text


def extra_keys(
    k: torch.Tensor, v: torch.Tensor, bias_k: torch.Tensor | None, bias_v: torch.Tensor | None, add_zero_attn: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """K and V (L′, N, E) with native's extra keys after the projected ones: the learned row bias_k (and bias_v),
    (1, 1, E), for every sequence (``add_bias_kv``), then a row of zeros (``add_zero_attn``); and how many
    were added. A mask gets as many columns that mask nothing (see :func:`merged_mask`). The rows are
    copies of the inputs, so their gradients are sums of the copies' (bias_k's: over the sequences)."""
    if (bias_k is None) != (bias_v is None):
        raise ValueError("multi_head_attention_forward: bias_k and bias_v are given together or not at all")
    added = 0
    if bias_k is not None and bias_v is not None:
        k, v, added = (
            torch.cat([k, bias_k.expand(1, k.shape[1], -1)]),
            torch.cat([v, bias_v.expand(1, v.shape[1], -1)]),
            1,
        )
    if add_zero_attn:
        k, v, added = (
            torch.cat([k, k.new_zeros(1, *k.shape[1:])]),
            torch.cat([v, v.new_zeros(1, *v.shape[1:])]),
            added + 1,
        )
    return k, v, added


def merged_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    n: int,
    heads: int,
    dtype: torch.dtype,
    added: int = 0,
) -> torch.Tensor | None:
    """One additive mask for scaled_dot_product_attention, (L, L′) or (N, H, L, L′): native's convention, a True
    entry (or −∞) masks a key out. attn_mask is (L, L′) or (N·H, L, L′); key_padding_mask (N, L′); each gets
    ``added`` columns of zeros for the extra keys (see :func:`extra_keys`)."""
    attn = F._canonical_mask(
        mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=dtype, check_other=False
    )
    other = F._none_or_dtype(attn_mask)
    padding = F._canonical_mask(
        mask=key_padding_mask, mask_name="key_padding_mask", other_type=other, other_name="attn_mask", target_type=dtype
    )
    if added:
        attn = None if attn is None else F.pad(attn, (0, added))
        padding = None if padding is None else F.pad(padding, (0, added))
    if attn is not None and attn.dim() == 3:
        attn = attn.view(n, heads, *attn.shape[-2:])
    if padding is None:
        return attn
    padding = padding.view(n, 1, 1, padding.shape[-1])
    return padding if attn is None else attn + padding


def in_projections(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    in_proj_weight: torch.Tensor | None,
    in_proj_bias: torch.Tensor | None,
    use_separate_proj_weight: bool,
    q_proj_weight: torch.Tensor | None,
    k_proj_weight: torch.Tensor | None,
    v_proj_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q = query W_qᵀ + b_q, K = key W_kᵀ + b_k, V = value W_vᵀ + b_v, each (L or L′, N, E): the packed weight's
    three blocks of rows (one product where query, key and value are one tensor), or the separate weights."""
    if use_separate_proj_weight:
        b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        return linear(query, q_proj_weight, b_q), linear(key, k_proj_weight, b_k), linear(value, v_proj_weight, b_v)  # type: ignore[arg-type]
    if query is key and key is value:  # self-attention: one product with the packed weight
        q, k, v = linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)  # type: ignore[arg-type]
        return q, k, v
    w_q, w_k, w_v = in_proj_weight.chunk(3)  # type: ignore[union-attr]
    b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    mask: torch.Tensor | None,
    dropout_p: float,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The heads' attention: Q, K, V (L or L′, N, E) split into H heads of E/H columns each, attended, and put
    side by side again: (L, N, E), and with ``need_weights`` each head's weights P dropped, (N, H, L, L′)."""
    length, n, embed_dim = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # (L, N, E) -> (N, H, L, E/H)
        return t.reshape(t.shape[0], n, num_heads, embed_dim // num_heads).permute(1, 2, 0, 3)

    if need_weights:  # the weights are P dropped, as native's
        output, p, factor = ScaledDotProductAttentionFunction.apply(
            heads(q), heads(k), heads(v), mask, dropout_p, False, None, False
        )
        weights = times_factor(p, factor, dropout_p)
    else:
        output, weights = scaled_dot_product_attention(heads(q), heads(k), heads(v), mask, dropout_p), None
    return output.permute(2, 0, 1, 3).reshape(length, n, embed_dim), weights


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
    ``dropout_p`` drops the attention's weights in training, drawing as native does. ``bias_k``/``bias_v``
    and ``add_zero_attn`` append native's extra keys (:func:`extra_keys`); ``static_k``/``static_v`` are
    refused (NotImplementedError); ``is_causal`` needs
    ``attn_mask``, the causal mask itself, as natively.
    """
    if static_k is not None or static_v is not None:
        raise NotImplementedError("torchbp multi-head attention: static_k and static_v are not hand-derived here")
    if is_causal and attn_mask is None:
        raise RuntimeError("multi_head_attention_forward: is_causal needs attn_mask, the causal mask itself")
    batched = query.dim() == 3
    if not batched:  # (L, E): one sequence
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    _, n, embed_dim = query.shape
    if embed_dim != embed_dim_to_check or embed_dim % num_heads:
        raise ShapeError(
            f"multi_head_attention_forward: expected query (L, N, {embed_dim_to_check}) with an embedding that "
            f"{num_heads} heads divide, got {shape_text(query)}"
        )
    q, k, v = in_projections(
        query, key, value, in_proj_weight, in_proj_bias, use_separate_proj_weight,
        q_proj_weight, k_proj_weight, v_proj_weight,
    )  # fmt: skip
    k, v, added = extra_keys(k, v, bias_k, bias_v, add_zero_attn)
    mask = merged_mask(attn_mask, key_padding_mask, n, num_heads, query.dtype, added)
    output, weights = attend(q, k, v, num_heads, mask, dropout_p if training else 0.0, need_weights)
    output = linear(output, out_proj_weight, out_proj_bias)
    if weights is not None and average_attn_weights:
        weights = weights.mean(1)
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
        add_bias_kv, add_zero_attn: as native's: a learned key and value row, and a row of zeros, after each
            sequence's keys and values (:func:`extra_keys`).
    """

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


class MultiheadAttentionCall(NamedTuple):
    """What a per-sample pass keeps of one call: the inputs with the samples first, (N, L or L′, E), detached
    (one tensor where query, key and value were one), the one additive mask, and what the call returned."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    average_attn_weights: bool


FORWARD = inspect.signature(MultiheadAttention.forward)


class MultiheadAttentionPerSample:
    """A multi-head attention's per-sample rule (torchbp.per_sample): the Linear rule on each of its products.

    Each product z = a Wᵀ + b (the in-projections of query, key and value; the out-projection of the heads'
    outputs O) contributes δ_n a_nᵀ to sample n's weight gradient and δ_n to its bias's, summed over the
    positions. The δ at the output arrives from the recorded pass; O and the δ at Q, K and V, which the
    pass does not keep, come from running the layer's own forward and backward again on the recorded
    inputs, all samples at once (attention does not mix samples). In training mode with ``dropout`` the
    replay would draw another mask: refused (eval mode or dropout=0 work). The attention weights returned
    with ``need_weights``, where the loss reads them, send their δ through the replay too.
    """

    def recorded(
        self, module: MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[MultiheadAttentionCall, list[tuple[torch.Tensor, int]]]:
        call = FORWARD.bind(module, *args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        query, key, value = given["query"], given["key"], given["value"]
        if query.dim() != 3:
            raise ShapeError(
                f"per-sample gradients: MultiheadAttention needs batched input, (N, L, E) with batch_first or "
                f"(L, N, E) without; got query {shape_text(query)}"
            )
        if module.training and module.dropout > 0:
            raise NotImplementedError(
                f"per-sample gradients: this MultiheadAttention drops attention weights in training "
                f"(dropout={module.dropout}), and its per-sample rule replays the attention, which would draw "
                "another mask; call eval() on the model, or use dropout=0"
            )

        def samples_first(t: torch.Tensor) -> torch.Tensor:
            return t.detach() if module.batch_first else t.detach().transpose(0, 1)

        q = samples_first(query)
        k = q if key is query else samples_first(key)
        v = k if value is key else samples_first(value)
        added = (module.bias_k is not None) + module.add_zero_attn
        mask = merged_mask(given["attn_mask"], given["key_padding_mask"], q.shape[0], module.num_heads, q.dtype, added)
        kept = MultiheadAttentionCall(q, k, v, None if mask is None else mask.detach(), given["average_attn_weights"])
        outputs = [(output[0], 0 if module.batch_first else 1)]
        if output[1] is not None:
            outputs.append((output[1], 0))
        return kept, outputs

    def products(
        self, module: MultiheadAttention, call: MultiheadAttentionCall, delta: Any
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each product's (δ, a), samples first: "q", "k", "v" (the in-projections), "out" (the out-projection)."""
        delta_out, delta_weights = delta if isinstance(delta, tuple) else (delta, None)

        def sequence_first(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(0, 1)

        query = sequence_first(call.query)
        key = query if call.key is call.query else sequence_first(call.key)
        value = key if call.value is call.key else sequence_first(call.value)
        with torch.enable_grad():
            projected = in_projections(
                query, key, value, module.in_proj_weight, module.in_proj_bias,
                not module._qkv_same_embed_dim, module.q_proj_weight, module.k_proj_weight, module.v_proj_weight,
            )  # fmt: skip
            q = projected[0].detach().requires_grad_()
            k, v, _ = extra_keys(projected[1], projected[2], module.bias_k, module.bias_v, module.add_zero_attn)
            k, v = k.detach().requires_grad_(), v.detach().requires_grad_()
            heads_output, weights = attend(q, k, v, module.num_heads, call.mask, 0.0, delta_weights is not None)
            outputs = [linear(heads_output, module.out_proj.weight.detach())]
            deltas = [sequence_first(delta_out)]
            if weights is not None:
                outputs.append(weights.mean(1) if call.average_attn_weights else weights)
                deltas.append(delta_weights)
            delta_q, delta_k, delta_v = torch.autograd.grad(outputs, (q, k, v), deltas)
        keys = call.key.shape[1]  # the projected keys; the extra ones follow (bias_k's row first)
        products = {
            "q": (sequence_first(delta_q), call.query),
            "k": (sequence_first(delta_k[:keys]), call.key),
            "v": (sequence_first(delta_v[:keys]), call.value),
            "out": (delta_out, sequence_first(heads_output.detach())),
        }
        if module.bias_k is not None:  # (N, E): the δ at each sequence's copy of the learned row
            products |= {"bias_k": (delta_k[keys], call.key), "bias_v": (delta_v[keys], call.value)}
        return products

    def grads(
        self, module: MultiheadAttention, a_prev: MultiheadAttentionCall, delta: Any, out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        products = self.products(module, a_prev, delta)
        grads = {}
        for name, weight, parts in projection_weights(module):
            if weight.requires_grad:
                each = [per_sample_weight_grads(*products[part]) for part in parts]
                grads[name] = torch.cat(each, dim=1, out=out.get(name)) if len(each) > 1 else each[0]
        for name, bias, parts in projection_biases(module):
            if bias is not None and bias.requires_grad:
                grads[name] = torch.cat(
                    [per_sample_bias_grads(products[part][0]) for part in parts], 1, out=out.get(name)
                )
        for name in learned_rows(module):
            grads[name] = learned_row_grads(products[name][0], out.get(name))
        return grads

    def norms_squared(self, module: MultiheadAttention, a_prev: MultiheadAttentionCall, delta: Any) -> torch.Tensor:
        products = self.products(module, a_prev, delta)
        total = torch.zeros(a_prev.query.shape[0], dtype=a_prev.query.dtype, device=a_prev.query.device)
        for _, weight, parts in projection_weights(module):
            if weight.requires_grad:
                for part in parts:  # the packed weight's blocks of rows add up
                    total = total + per_sample_weight_grad_norms_squared(*products[part])
        for _, bias, parts in projection_biases(module):
            if bias is not None and bias.requires_grad:
                for part in parts:
                    total = total + per_sample_bias_grads(products[part][0]).square().sum(1)
        for name in learned_rows(module):
            total = total + products[name][0].square().sum(1)
        return total


def projection_weights(module: MultiheadAttention) -> list[tuple[str, torch.Tensor, tuple[str, ...]]]:
    """Each weight's name, tensor and the products it serves (a packed weight's blocks of rows, in order)."""
    projections: list[tuple[str, torch.Tensor, tuple[str, ...]]]
    if module._qkv_same_embed_dim:
        projections = [("in_proj_weight", module.in_proj_weight, ("q", "k", "v"))]
    else:
        projections = [
            ("q_proj_weight", module.q_proj_weight, ("q",)),
            ("k_proj_weight", module.k_proj_weight, ("k",)),
            ("v_proj_weight", module.v_proj_weight, ("v",)),
        ]
    return [*projections, ("out_proj.weight", module.out_proj.weight, ("out",))]


def projection_biases(module: MultiheadAttention) -> list[tuple[str, torch.Tensor | None, tuple[str, ...]]]:
    return [
        ("in_proj_bias", module.in_proj_bias, ("q", "k", "v")),
        ("out_proj.bias", module.out_proj.bias, ("out",)),
    ]


def learned_rows(module: MultiheadAttention) -> list[str]:
    """bias_k and bias_v, where the layer has them and they require grad."""
    return [
        name
        for name in ("bias_k", "bias_v")
        if getattr(module, name) is not None and getattr(module, name).requires_grad
    ]


def learned_row_grads(delta_row: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """A learned key or value row's per-sample gradient: the δ at the sample's copy of it, (N, 1, 1, E)."""
    shaped = delta_row.reshape(delta_row.shape[0], 1, 1, delta_row.shape[-1])
    return shaped if out is None else out.copy_(shaped)


register(
    Layer(
        torch.nn.MultiheadAttention,
        MultiheadAttention,
        ScaledDotProductAttentionFunction,
        multi_head_attention_forward,
        per_sample=MultiheadAttentionPerSample(),
    )
)
