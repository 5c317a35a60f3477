"""Scaled dot-product attention, worked on one head of three positions with a causal mask
(torchbp/layers/attention.py).

S = Q Kᵀ/√E, P = softmax(S) over the keys, O = P V. Given G = ∂J/∂O: ∂J/∂V = Pᵀ G, ∂J/∂P = G Vᵀ,
∂J/∂S = P ⊙ (∂J/∂P − Σ_keys ∂J/∂P ⊙ P), ∂J/∂Q = ∂J/∂S K/√E, ∂J/∂K = (∂J/∂S)ᵀ Q/√E.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

Q = [[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]  # three queries of E = 2
K = [[1.0, 1.0], [-1.0, 0.5], [0.5, -0.5]]  # three keys
V = [[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]  # three values
G = [[0.5, -0.5], [0.25, 1.0], [-1.0, 0.5]]  # G = ∂J/∂O, as the layers above would hand it down


def numpy_way(q, k, v, g) -> dict[str, np.ndarray]:
    s = 1 / np.sqrt(q.shape[1])
    scores = q @ k.T * s
    masked = np.where(np.triu(np.ones_like(scores, dtype=bool), 1), -np.inf, scores)  # key j > query i: −∞
    e = np.exp(masked - masked.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    dP = g @ v.T
    dS = p * (dP - (dP * p).sum(1, keepdims=True))  # chapter 13's product, on each query's row
    return dict(
        S=masked,
        P=p,
        O=p @ v,
        dJ_dV=p.T @ g,
        dJ_dP=dP,
        dJ_dS=dS,
        dJ_dQ=dS @ k * s,
        dJ_dK=dS.T @ q * s,
    )


def code_way(q, k, v, g, attention) -> dict[str, np.ndarray]:
    """O, ∂J/∂Q, ∂J/∂K and ∂J/∂V from ``attention`` (F.scaled_dot_product_attention's signature), causal, with
    ∂J/∂O = G; one sample and one head, (1, 1, 3, 2)."""
    q, k, v = (t.clone()[None, None].requires_grad_() for t in (q, k, v))
    o = attention(q, k, v, is_causal=True)
    o.backward(g[None, None])
    return dict(O=o[0, 0].detach().numpy(), dJ_dQ=q.grad[0, 0].numpy(), dJ_dK=k.grad[0, 0].numpy(),
                dJ_dV=v.grad[0, 0].numpy())  # fmt: skip


def three_ways() -> dict:
    q, k, v, g = (torch.tensor(t, dtype=torch.float64) for t in (Q, K, V, G))
    numbers = numpy_way(*(t.numpy() for t in (q, k, v, g)))
    ways = {
        "NumPy": {name: numbers[name] for name in ("O", "dJ_dQ", "dJ_dK", "dJ_dV")},
        "torchbp": code_way(q, k, v, g, torchbp.functional.scaled_dot_product_attention),
        "autograd": code_way(q, k, v, g, F.scaled_dot_product_attention),
    }
    return dict(q=Q, k=K, v=V, g=G, values=numbers, differences=agree(ways))


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "attention-forward": "\n\n".join(
            [
                matrix("Q", numbers["q"]),
                matrix("K", numbers["k"]),
                matrix("V", numbers["v"]),
                matrix("S = Q Kᵀ / √2, −∞ above the diagonal (causal)", v["S"]),
                matrix("P = softmax(S), each row", v["P"]),
                matrix("O = P V", v["O"]),
            ]
        ),
        "attention-backward": "\n\n".join(
            [
                matrix("G = ∂J/∂O", numbers["g"]),
                matrix("∂J/∂V = Pᵀ G", v["dJ_dV"]),
                matrix("∂J/∂P = G Vᵀ (not 0 above the diagonal)", v["dJ_dP"]),
                matrix("∂J/∂S = P ⊙ (∂J/∂P − Σ_j ∂J/∂P ⊙ P) (0 wherever P is)", v["dJ_dS"]),
                matrix("∂J/∂Q = ∂J/∂S K / √2", v["dJ_dQ"]),
                matrix("∂J/∂K = (∂J/∂S)ᵀ Q / √2", v["dJ_dK"]),
            ]
        ),
        "attention-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "attention-forward": "Attention's forward: one head, three positions, causal",
    "attention-backward": "Attention's backward: three products and a softmax",
    "attention-three-ways": "NumPy, torchbp and autograd agree",
}

CODE = [
    ("attention: S = Q Kᵀ/√E", "torchbp/layers/attention.py",
     "scores = (scores.mul_ if own else scores.mul)(s)  # S = Q Kᵀ/√E"),
    ("∂J/∂V = Pᵀ G", "torchbp/layers/attention.py", "grad_v = summed_over_groups(dropped.transpose(-2, -1) @ g"),
    ("∂J/∂P = G Vᵀ", "torchbp/layers/attention.py", "grad_p = None if g is None else g @ v.transpose(-2, -1)"),
    ("∂J/∂S = P ⊙ (∂J/∂P − Σ ∂J/∂P ⊙ P)", "torchbp/layers/attention.py",
     "grad_scores = softmax_backward(grad_p, p, -1)"),
    ("∂J/∂Q = ∂J/∂S K/√E", "torchbp/layers/attention.py", "grad_q = scaled(grad_scores @ k, ctx.scale, own)"),
    ("∂J/∂K = (∂J/∂S)ᵀ Q/√E", "torchbp/layers/attention.py",
     "scaled(grad_scores.transpose(-2, -1) @ query, ctx.scale, own)"),
]  # fmt: skip
