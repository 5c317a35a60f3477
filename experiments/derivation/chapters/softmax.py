"""The softmax on its own, worked on a 2×4 input (torchbp/layers/softmax.py).

p = softmax(z) over each row; its Jacobian is ∂p_i/∂z_j = p_i ([i = j] − p_j), diag(p) − p pᵀ, and the
backward never forms it: ∂J/∂z = p ⊙ (g − Σ g ⊙ p), one dot product per row.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

Z = [[1.0, 2.0, 0.5, -1.0], [0.0, 3.0, -2.0, 1.0]]
G = [[0.2, -0.5, 0.3, 0.1], [-0.4, 0.6, 0.0, 0.2]]  # g = ∂J/∂p, as the layers above would hand it down


def numpy_way(z, g) -> dict[str, np.ndarray]:
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    jacobians = np.stack([np.diag(row) - np.outer(row, row) for row in p])  # p_i ([i = j] − p_j): (2, 4, 4)
    long_way = np.einsum("nij,ni->nj", jacobians, g)  # Σ_i g_i ∂p_i/∂z_j, the Jacobian formed
    dot = (g * p).sum(1, keepdims=True)  # Σ_i g_i p_i
    return dict(p=p, jacobian_0=jacobians[0], long_way=long_way, dot=dot, dJ_dz=p * (g - dot))


def code_way(z, g, softmax) -> dict[str, np.ndarray]:
    """p and ∂J/∂z from ``softmax`` (F.softmax's signature) over the rows, with ∂J/∂p = g."""
    z = z.clone().requires_grad_()
    p = softmax(z, 1)
    p.backward(g)
    return dict(p=p.detach().numpy(), dJ_dz=z.grad.numpy())


def three_ways() -> dict:
    z, g = (torch.tensor(t, dtype=torch.float64) for t in (Z, G))
    numbers = numpy_way(z.numpy(), g.numpy())
    ways = {
        "NumPy": dict(p=numbers["p"], dJ_dz=numbers["dJ_dz"]),
        "torchbp": code_way(z, g, torchbp.functional.softmax),
        "autograd": code_way(z, g, F.softmax),
    }
    differences = agree(ways)
    differences["∂J/∂z, the Jacobian formed"] = float(np.abs(numbers["long_way"] - numbers["dJ_dz"]).max())
    return dict(z=z.numpy(), g=g.numpy(), values=numbers, differences=differences)


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "softmax-example": "\n\n".join(
            [
                matrix("z", numbers["z"]),
                matrix("p = softmax(z), each row", v["p"]),
                matrix("the first row's Jacobian, diag(p) − p pᵀ: p_i ([i = j] − p_j)", v["jacobian_0"]),
                matrix("g = ∂J/∂p", numbers["g"]),
                matrix("Σ_i g_i p_i, each row", v["dot"]),
                matrix("∂J/∂z = p ⊙ (g − Σ g ⊙ p)", v["dJ_dz"]),
                matrix("the long way, (∂p/∂z)ᵀ g with the Jacobian formed", v["long_way"]),
            ]
        ),
        "softmax-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "softmax-example": "Softmax of a 2×4 input, and its backward",
    "softmax-three-ways": "NumPy, torchbp and autograd agree (and the long way)",
}

CODE = [
    ("p = softmax(z)", "torchbp/layers/softmax.py", "return torch.softmax(input, dim)"),
    ("∂J/∂z = p ⊙ (g − Σ g ⊙ p)", "torchbp/layers/softmax.py", "centred = g - (g * y).sum(dim, keepdim=True)"),
    ("log-softmax: ∂J/∂z = g − p Σ g", "torchbp/layers/log_softmax.py", "total = g.sum(dim, keepdim=True)"),
]  # fmt: skip
