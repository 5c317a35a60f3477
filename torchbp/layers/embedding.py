"""The embedding a = W[i], a row of W looked up by index: its Function, checks, functional form, module and
per-sample rule."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule, running_eagerly
from torchbp.table import Layer, register
from torchbp.validation import (
    DeviceError,
    DTypeError,
    IndexRangeError,
    ShapeError,
    shape_text,
    validate_floating,
)

INDEX_DTYPES = (torch.int64, torch.int32)


def validate_embedding(input: Any, weight: Any) -> None:
    """Integer indices, a 2-D floating-point weight on their device; each index a row of the weight."""
    if not isinstance(input, torch.Tensor) or input.dtype not in INDEX_DTYPES:
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise DTypeError(f"embedding: expected input to be a tensor of indices (int64 or int32), got {got}")
    validate_floating("embedding", weight)
    if weight.dim() != 2:
        raise ShapeError(
            f"embedding: expected weight of shape (num_embeddings, embedding_dim), got {shape_text(weight)}"
        )
    if weight.device != input.device:
        raise DeviceError(f"embedding: expected input on the weight's device ({weight.device}), got {input.device}")
    if running_eagerly() and input.numel() > 0:  # the compiler's gather refuses such an index itself
        low, high = torch.stack(torch.aminmax(input)).tolist()
        if low < 0 or high >= weight.shape[0]:
            bad = low if low < 0 else high
            raise IndexRangeError(
                f"embedding: expected indices in [0, {weight.shape[0]}) for weight {shape_text(weight)}, got {bad} "
                f"in the input of shape {shape_text(input)}"
            )


def refuse_unsupported(max_norm: Any, sparse: bool) -> None:
    if max_norm is not None:
        raise NotImplementedError(
            "torchbp embedding: max_norm renormalises the weight's rows in place during the forward, which has "
            "no hand-derived backward here; torchbp.convert leaves such an Embedding native"
        )
    if sparse:
        raise NotImplementedError(
            "torchbp embedding: sparse=True gives a sparse gradient, which has no hand-derived backward here; "
            "torchbp.convert leaves such an Embedding native"
        )


def embedding_backward(
    g: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int | None, scale_grad_by_freq: bool
) -> torch.Tensor:
    """∂J/∂W[v] = Σ_{k: i_k = v} g_k, the upstream rows scattered and added into the rows they were looked up
    from (an index looked up twice gets both rows); 0 for v = padding_idx; with ``scale_grad_by_freq`` each
    g_k divided by how often i_k occurs in the input."""
    rows = g.reshape(-1, g.shape[-1])  # g_k: (K, D)
    flat = indices.reshape(-1)  # i_k: (K,)
    if scale_grad_by_freq:
        counts = torch.zeros(num_weights, dtype=g.dtype, device=g.device).index_add(
            0, flat, torch.ones_like(rows[:, 0])
        )
        rows = rows / counts[flat].unsqueeze(1)  # g_k / count(i_k)
    if padding_idx is not None:
        rows = torch.where((flat != padding_idx).unsqueeze(1), rows, 0)  # the padding row gets nothing
    return torch.zeros(num_weights, rows.shape[1], dtype=g.dtype, device=g.device).index_add(0, flat, rows)


class EmbeddingFunction(HandDerivedFunction):
    r"""a = W[i]: each index i_k picks row i_k of W, with the backward derived by hand.

    a_k = W[i_k] is linear in W with ∂a_k/∂W[v] = [i_k = v], so
    ∂J/∂W[v] = Σ_k [i_k = v] g_k: a scatter-add of the upstream rows into the rows that were
    looked up, an index that occurs twice adding both. The row at ``padding_idx`` gets no
    gradient; ``scale_grad_by_freq`` divides each g_k by the count of i_k in the input. The
    indices get no gradient. ``EmbeddingFunction.apply(input, weight, padding_idx,
    scale_grad_by_freq)``; gradients agree with native's to rounding (native adds the rows
    into each weight row in the same order).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor, weight: torch.Tensor, padding_idx: int | None, scale_grad_by_freq: bool
    ) -> torch.Tensor:
        validate_embedding(input, weight)
        return F.embedding(input, weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        input, weight, ctx.padding_idx, ctx.scale_grad_by_freq = inputs
        ctx.save_for_backward(input)
        ctx.num_weights = weight.shape[0]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor | None, None, None]:
        (input,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        grad_weight = embedding_backward(g, input, ctx.num_weights, ctx.padding_idx, ctx.scale_grad_by_freq)
        return None, grad_weight, None, None


def normalized_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """A negative padding_idx counted from the end, as native's; one outside the weight's rows refused."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise IndexRangeError(
            f"embedding: expected padding_idx in [-{num_embeddings}, {num_embeddings}), got {padding_idx}"
        )
    return padding_idx % num_embeddings


def embedding(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> torch.Tensor:
    """weight[input], as torch.nn.functional.embedding, backward by EmbeddingFunction.

    ``max_norm`` and ``sparse=True`` are refused (NotImplementedError).
    """
    refuse_unsupported(max_norm, sparse)
    padding_idx = normalized_padding_idx(padding_idx, weight.shape[0]) if isinstance(weight, torch.Tensor) else None
    return EmbeddingFunction.apply(input, weight, padding_idx, scale_grad_by_freq)  # type: ignore[no-any-return]


class Embedding(HandDerivedModule, torch.nn.Embedding):
    r"""torch.nn.Embedding whose backward is :class:`EmbeddingFunction`.

    .. math:: a_k = W[i_k], \qquad \partial J/\partial W[v] = \textstyle\sum_{k: i_k = v} g_k

    Args:
        num_embeddings, embedding_dim, padding_idx, scale_grad_by_freq, _weight, _freeze, device, dtype: as
            torch.nn.Embedding's (the same initialization, the padding row zeroed).
        max_norm, sparse: refused here, at construction (NotImplementedError) unless None and False;
            ``torchbp.convert`` leaves such an Embedding native.

    Shape:
        - Input: :math:`(*)` indices; Output: :math:`(*, D)`, D = embedding_dim.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        refuse_unsupported(self.max_norm, self.sparse)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return embedding(input, self.weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq)


def supported(module: torch.nn.Embedding) -> bool:
    return module.max_norm is None and not module.sparse


# -- the per-sample view ---------------------------------------------------------------
# ∂J/∂W = Σ_n Σ_t [i_n,t = v] g_n,t: kept apart per sample n, each sample's gradient scatters only its own rows.


def per_sample_weight_grads(
    delta: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """G_n[v] = Σ_t [i_n,t = v] g_n,t for every sample n: (N, V, D), each sample's rows scattered into its own
    (V, D) block. ``out``, when given, receives it."""
    n, dim = indices.shape[0], delta.shape[-1]
    flat = indices.reshape(n, -1)  # (N, T)
    rows = delta.reshape(n, -1, dim)  # (N, T, D)
    if padding_idx is not None:
        rows = torch.where((flat != padding_idx).unsqueeze(-1), rows, 0)
    into = (flat + num_weights * torch.arange(n, device=flat.device).unsqueeze(1)).reshape(-1)  # row v of block n
    grads = out if out is not None else delta.new_empty(n, num_weights, dim)
    grads.zero_().view(n * num_weights, dim).index_add_(0, into, rows.reshape(-1, dim))
    return grads


def per_sample_weight_grad_norms_squared(
    delta: torch.Tensor, indices: torch.Tensor, padding_idx: int | None
) -> torch.Tensor:
    """‖G_n‖² = Σ_v ‖Σ_{t: i_n,t = v} g_n,t‖² = Σ_{t,t′} [i_n,t = i_n,t′] g_n,t · g_n,t′, shape (N,): the (N, V, D)
    gradients never formed (T × T per sample, where the gradient is V × D)."""
    n = indices.shape[0]
    flat = indices.reshape(n, -1)  # (N, T)
    rows = delta.reshape(n, flat.shape[1], -1)  # (N, T, D)
    same_row = flat.unsqueeze(2) == flat.unsqueeze(1)  # [i_t = i_t′]: (N, T, T)
    if padding_idx is not None:
        same_row &= (flat != padding_idx).unsqueeze(2)
    gram = rows @ rows.transpose(1, 2)  # g_t · g_t′: (N, T, T)
    return torch.where(same_row, gram, 0).sum((1, 2))


class EmbeddingPerSample:
    """An embedding's per-sample rule (torchbp.per_sample): from a call's indices and g, each sample's weight
    gradient (its own rows of g scattered into a (V, D) block), or its squared norm without the blocks."""

    def grads(
        self, module: Embedding, a_prev: torch.Tensor, delta: torch.Tensor, out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        self._refuse_coupled(module)
        if not module.weight.requires_grad:
            return {}
        return {
            "weight": per_sample_weight_grads(
                delta, a_prev, module.num_embeddings, module.padding_idx, out.get("weight")
            )
        }

    def norms_squared(self, module: Embedding, a_prev: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self._refuse_coupled(module)
        if not module.weight.requires_grad:
            return delta.new_zeros(delta.shape[0])
        return per_sample_weight_grad_norms_squared(delta, a_prev, module.padding_idx)

    @staticmethod
    def _refuse_coupled(module: Embedding) -> None:
        if module.scale_grad_by_freq:
            raise NotImplementedError(
                "per-sample gradients: an Embedding with scale_grad_by_freq=True divides each row by how often "
                "its index occurs in the whole batch, which couples the samples; train it without, or freeze it"
            )


register(
    Layer(torch.nn.Embedding, Embedding, EmbeddingFunction, embedding, per_sample=EmbeddingPerSample(), runs=supported)
)
