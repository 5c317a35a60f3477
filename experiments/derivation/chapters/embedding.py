"""The embedding, worked on a 5×3 table looked up by two samples of three indices (torchbp/layers/embedding.py).

a_k = W[i_k]; ∂J/∂W[v] = Σ_k [i_k = v] g_k: the upstream rows scattered and added into the rows that were
looked up, none into the padding row.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

W = [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [2.0, 0.0, 1.0], [-0.5, 1.5, 0.0], [0.25, 0.5, -2.0]]
I = [[1, 3, 1], [4, 0, 1]]  # two samples of three indices; 1 three times, 0 the padding row, 2 never
PADDING = 0
G = [  # g = ∂J/∂a, one row per index looked up, as the layers above would hand it down
    [[0.1, 0.2, -0.3], [0.5, -0.5, 1.0], [0.2, 0.0, 0.4]],
    [[-1.0, 0.5, 0.25], [0.3, 0.3, 0.3], [0.05, -0.2, 0.1]],
]


def numpy_way(w, i, g) -> dict[str, np.ndarray]:
    dW = np.zeros_like(w)
    for k, v in enumerate(i.reshape(-1)):  # each lookup adds its row of g into the row it read
        if v != PADDING:
            dW[v] += g.reshape(-1, w.shape[1])[k]
    per_sample = np.zeros((len(i), *w.shape))  # each sample's own rows only
    for n in range(len(i)):
        for k, v in enumerate(i[n]):
            if v != PADDING:
                per_sample[n, v] += g[n, k]
    return dict(a=w[i], dJ_dW=dW, per_sample=per_sample)


def code_way(w, i, g, embedding) -> dict[str, np.ndarray]:
    """a and ∂J/∂W from ``embedding`` (F.embedding's signature), with ∂J/∂a = g."""
    w = w.clone().requires_grad_()
    a = embedding(i, w, padding_idx=PADDING)
    a.backward(g)
    return dict(a=a.detach().numpy(), dJ_dW=w.grad.numpy())


def three_ways() -> dict:
    w, g = (torch.tensor(t, dtype=torch.float64) for t in (W, G))
    i = torch.tensor(I)
    numbers = numpy_way(w.numpy(), i.numpy(), g.numpy())
    ways = {
        "NumPy": dict(a=numbers["a"], dJ_dW=numbers["dJ_dW"]),
        "torchbp": code_way(w, i, g, torchbp.functional.embedding),
        "autograd": code_way(w, i, g, F.embedding),
    }
    differences = agree(ways)
    summed = float(np.abs(numbers["per_sample"].sum(0) - numbers["dJ_dW"]).max())
    differences["the samples' own gradients, summed"] = summed
    return dict(w=w.numpy(), i=i.numpy(), g=g.numpy(), values=numbers, differences=differences)


def indices(name: str, value: np.ndarray) -> str:
    """A named integer matrix, one row a line."""
    rows = "\n".join("   " + "  ".join(f"{v:d}" for v in row) for row in value)
    return f"{name}  ({'×'.join(map(str, value.shape))})\n{rows}"


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "embedding-example": "\n\n".join(
            [
                matrix("W (rows 0 to 4; row 0 the padding row)", numbers["w"]),
                indices("i, one row per sample", numbers["i"]),
                matrix("a = W[i], one row per index looked up", v["a"]),
                matrix("g = ∂J/∂a", numbers["g"]),
                matrix("∂J/∂W[v] = Σ_{k: i_k = v} g_k", v["dJ_dW"]),
                matrix("sample 1's own ∂J/∂W", v["per_sample"][0]),
                matrix("sample 2's own ∂J/∂W", v["per_sample"][1]),
            ]
        ),
        "embedding-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "embedding-example": "An embedding's lookup and its scatter-add",
    "embedding-three-ways": "NumPy, torchbp and autograd agree",
}

CODE = [
    ("embedding: a = W[i]", "torchbp/layers/embedding.py", "return F.embedding(input, weight)"),
    ("∂J/∂W[v] = Σ_{k: i_k = v} g_k", "torchbp/layers/embedding.py",
     "return torch.zeros(num_weights, rows.shape[1], dtype=g.dtype, device=g.device).index_add(0, flat, rows)"),
    ("the padding row gets no gradient", "torchbp/layers/embedding.py",
     "rows = torch.where((flat != padding_idx).unsqueeze(1), rows, 0)  # the padding row gets nothing"),
    ("per sample n: ∂J/∂W[v] = Σ_k [i_n,k = v] g_n,k", "torchbp/layers/embedding.py",
     "grads.zero_().view(n * num_weights, dim).index_add_(0, into, rows.reshape(-1, dim))"),
]  # fmt: skip
