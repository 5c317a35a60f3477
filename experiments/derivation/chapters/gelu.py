"""GELU, worked on seven inputs (torchbp/layers/gelu.py).

a = z Φ(z), Φ the standard normal's distribution function; a'(z) = Φ(z) + z φ(z), φ its density.
The tanh approximation a = ½ z (1 + tanh u), u = √(2/π) (z + κ z³), has
a'(z) = ½ (1 + tanh u) + ½ z (1 − tanh² u) √(2/π) (1 + 3κ z²).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

Z = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]
KAPPA = 0.044715


def numpy_way(z) -> dict[str, np.ndarray]:
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))  # Φ(z)
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # φ(z)
    u = math.sqrt(2 / math.pi) * (z + KAPPA * z**3)
    du_dz = math.sqrt(2 / math.pi) * (1 + 3 * KAPPA * z**2)
    return dict(
        Phi=cdf,
        phi=pdf,
        a=z * cdf,
        da_dz=cdf + z * pdf,  # the product rule on z · Φ(z)
        a_tanh=0.5 * z * (1 + np.tanh(u)),
        da_dz_tanh=0.5 * (1 + np.tanh(u)) + 0.5 * z * (1 - np.tanh(u) ** 2) * du_dz,
    )


def code_way(z, gelu) -> dict[str, np.ndarray]:
    """a and a'(z) from ``gelu`` (F.gelu's signature), both forms; with ∂J/∂a = 1, ∂J/∂z is a'(z)."""
    values = {}
    for approximate, suffix in (("none", ""), ("tanh", "_tanh")):
        z_leaf = z.clone().requires_grad_()
        a = gelu(z_leaf, approximate=approximate)
        a.backward(torch.ones_like(a))
        values |= {f"a{suffix}": a.detach().numpy(), f"da_dz{suffix}": z_leaf.grad.numpy()}
    return values


def three_ways() -> dict:
    z = torch.tensor(Z, dtype=torch.float64)
    numbers = numpy_way(z.numpy())
    ways = {
        "NumPy": {name: numbers[name] for name in ("a", "da_dz", "a_tanh", "da_dz_tanh")},
        "torchbp": code_way(z, torchbp.functional.gelu),
        "autograd": code_way(z, F.gelu),
    }
    return dict(z=z.numpy(), values=numbers, differences=agree(ways))


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "gelu-example": "\n\n".join(
            [
                matrix("z", numbers["z"]),
                matrix("Φ(z)", v["Phi"]),
                matrix("φ(z)", v["phi"]),
                matrix("a = z Φ(z)", v["a"]),
                matrix("a'(z) = Φ(z) + z φ(z)", v["da_dz"]),
                matrix("tanh form: a", v["a_tanh"]),
                matrix("tanh form: a'(z)", v["da_dz_tanh"]),
            ]
        ),
        "gelu-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "gelu-example": "GELU and its derivative on seven inputs, both forms",
    "gelu-three-ways": "NumPy, torchbp and autograd agree",
}

CODE = [
    ("GELU: a'(z) = Φ(z) + z φ(z)", "torchbp/layers/gelu.py", "else cdf + z * pdf  # Φ(z) + z φ(z)"),
    ("tanh GELU: a'(z) = ½ (1 + tanh u) + ½ z (1 − tanh² u) du/dz", "torchbp/layers/gelu.py",
     "return 0.5 * (1 + tanh_u) + 0.5 * z * (1 - tanh_u * tanh_u) * du_dz"),
]  # fmt: skip
