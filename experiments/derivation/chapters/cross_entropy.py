"""Softmax with cross-entropy, worked on 2 samples × 3 classes (torchbp/layers/cross_entropy.py).

ℓ_n = −Σ_c q_nc log p_nc with p_n = softmax(z_n), and ∂ℓ_n/∂z_n = p_n Σ_c q_nc − q_n;
"mean" divides both by the count of targets. The same formula, with q changed,
covers label smoothing and ignore_index, so each case below is one row of CASES.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

Z = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]  # sample 1 leans towards its class, sample 2 away from it
TARGET = [0, 2]
IGNORE_INDEX = -100
SHIFT = 1000.0  # e^1000 overflows float64, whose largest e^z is at z ≈ 709.8
SMOOTHING = 0.1
# the suffix of a case's quantities: (added to every logit, label smoothing ε, target)
CASES = {
    "": (0.0, 0.0, TARGET),
    "_shifted": (SHIFT, 0.0, TARGET),
    "_smoothed": (0.0, SMOOTHING, TARGET),
    "_ignored": (0.0, 0.0, [TARGET[0], IGNORE_INDEX]),
}


def numpy_log_softmax(z):
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))  # log p = z − m − log Σ e^(z − m): each e^ ≤ 1


def numpy_distribution(target, classes, smoothing):
    """q: one-hot rows mixed with the uniform, (1 − ε) q + ε/C; a row of zeros where the target is ignored."""
    counted = target != IGNORE_INDEX
    q = np.eye(classes)[np.where(counted, target, 0)] * (1 - smoothing) + smoothing / classes
    return q * counted[:, None]


def numpy_way(z) -> dict[str, np.ndarray]:
    values = {}
    for case, (shift, smoothing, target) in CASES.items():
        target = np.array(target)
        q = numpy_distribution(target, z.shape[1], smoothing)
        count = (target != IGNORE_INDEX).sum()  # "mean" over the targets not ignored
        log_p = numpy_log_softmax(z + shift)
        p = np.exp(log_p)
        loss = -(q * log_p).sum(1)  # ℓ_n = −Σ_c q_nc log p_nc
        delta = (p * q.sum(1, keepdims=True) - q) / count  # ∂J/∂z_n = (p_n Σ_c q_nc − q_n) / count
        values |= {
            f"q{case}": q,
            f"p{case}": p,
            f"loss{case}": loss,
            f"J{case}": loss.sum() / count,
            f"delta{case}": delta,
        }
    with np.errstate(over="ignore", invalid="ignore"):  # e^1000 / Σ e^… is ∞ / ∞
        values["naive_p_shifted"] = np.exp(z + SHIFT) / np.exp(z + SHIFT).sum(1, keepdims=True)
    return values


def code_way(z, cross_entropy) -> dict[str, np.ndarray]:
    """Every case's J and δ = ∂J/∂z from ``cross_entropy`` (F.cross_entropy's signature), and ℓ_n of the first."""
    values = {"loss": cross_entropy(z, torch.tensor(TARGET), reduction="none")}
    for case, (shift, smoothing, target) in CASES.items():
        logits = (z + shift).requires_grad_()
        J = cross_entropy(logits, torch.tensor(target), ignore_index=IGNORE_INDEX, label_smoothing=smoothing)
        J.backward()
        values |= {f"J{case}": J, f"delta{case}": logits.grad}
    return {name: value.detach().numpy() for name, value in values.items()}


def three_ways() -> dict:
    z = torch.tensor(Z, dtype=torch.float64)
    ways = {
        "NumPy": numpy_way(z.numpy()),
        "torchbp": code_way(z, torchbp.functional.cross_entropy),
        "autograd": code_way(z, F.cross_entropy),
    }
    return dict(z=z.numpy(), values=ways["NumPy"], differences=agree(ways))


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "cross-entropy-example": "\n\n".join(
            [
                matrix("z", numbers["z"]),
                f"t = {TARGET}",
                matrix("q (one-hot t)", v["q"]),
                matrix("p = softmax(z)", v["p"]),
                matrix("ℓ = −Σ_c q log p", v["loss"]),
                matrix("J = (1/N) Σ_n ℓ_n", v["J"]),
                matrix("δ = ∂J/∂z = (p − q) / N", v["delta"]),
            ]
        ),
        "cross-entropy-stability": "\n\n".join(
            [
                matrix(f"e^(z + {SHIFT:g}) / Σ e^(z + {SHIFT:g}), as written", v["naive_p_shifted"]),
                matrix(f"p at z + {SHIFT:g}, through log-sum-exp", v["p_shifted"]),
                matrix(f"J at z + {SHIFT:g}", v["J_shifted"]),
                matrix(f"δ at z + {SHIFT:g}", v["delta_shifted"]),
            ]
        ),
        "cross-entropy-variants": "\n\n".join(
            [
                matrix(f"q, smoothed with ε = {SMOOTHING}", v["q_smoothed"]),
                matrix("J", v["J_smoothed"]),
                matrix("δ = (p − q) / N", v["delta_smoothed"]),
                f"t = {CASES['_ignored'][2]}: sample 2 ignored",
                matrix("q", v["q_ignored"]),
                matrix("J = ℓ_1 / 1", v["J_ignored"]),
                matrix("δ = (p Σ_c q − q) / 1", v["delta_ignored"]),
            ]
        ),
        "cross-entropy-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "cross-entropy-example": "Softmax with cross-entropy: 2 samples × 3 classes, mean over the samples",
    "cross-entropy-stability": f"The same logits plus {SHIFT:g}",
    "cross-entropy-variants": "Label smoothing and ignore_index",
    "cross-entropy-three-ways": "NumPy, torchbp and autograd agree",
}

PATH = "torchbp/layers/cross_entropy.py"
CODE = [
    ("log p = z − logsumexp z (log-softmax)", PATH, "log_p = F.log_softmax(input, class_dim(input))"),
    ("ℓ_n = −Σ_c q_nc log p_nc", PATH, "terms = log_p * smoothed(target, label_smoothing, C)"),
    ('s = g / count for "mean"', PATH, "minus_s = -(g / count)"),
    ("∂J/∂log p = −s q", PATH, "u = minus_s * smoothed(target, label_smoothing, C)"),
    (
        "∂J/∂z_n = p_n Σ_c s q_nc − s q_n",
        "torchbp/layers/log_softmax.py",
        "return g.addcmul_(y, total, value=-1) if in_place",
    ),
    ("label smoothing: q ← (1 − ε) q + ε/C", PATH, "return q * (1 - label_smoothing) + per_class("),
    ("ignore_index: q_n = 0, and not counted", PATH, "counted = (target != ignore_index).unsqueeze(dim)"),
]
