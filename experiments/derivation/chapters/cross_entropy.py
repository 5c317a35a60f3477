"""Softmax with cross-entropy, worked on 2 samples × 3 classes (torchbp/layers/cross_entropy.py).

ℓ_n = −Σ_c y_nc log p_nc with p_n = softmax(z_n) and y_n the target distribution, and
∂ℓ_n/∂z_n = p_n Σ_c y_nc − y_n; "mean" divides both by the count of targets. The same formula,
with y changed, covers label smoothing and ignore_index, so each case below is one row of CASES.
Two classes with logits (0, z) are chapter 5's sigmoid output: SATURATING compares the two δ there.
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
SMOOTHING = 0.1  # the document's α
SATURATING = [-2.0, 0.0, 2.0, 4.0, 8.0]  # the second of two logits (0, z), the target the first class
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
    """y: one-hot rows mixed with the uniform, (1 − α) y + α/C; a row of zeros where the target is ignored."""
    counted = target != IGNORE_INDEX
    y = np.eye(classes)[np.where(counted, target, 0)] * (1 - smoothing) + smoothing / classes
    return y * counted[:, None]


def numpy_way(z) -> dict[str, np.ndarray]:
    values = {}
    for case, (shift, smoothing, target) in CASES.items():
        target = np.array(target)
        y = numpy_distribution(target, z.shape[1], smoothing)
        count = (target != IGNORE_INDEX).sum()  # "mean" over the targets not ignored
        log_p = numpy_log_softmax(z + shift)
        p = np.exp(log_p)
        loss = -(y * log_p).sum(1)  # ℓ_n = −Σ_c y_nc log p_nc
        delta = (p * y.sum(1, keepdims=True) - y) / count  # ∂J/∂z_n = (p_n Σ_c y_nc − y_n) / count
        values |= {
            f"y{case}": y,
            f"p{case}": p,
            f"loss{case}": loss,
            f"J{case}": loss.sum() / count,
            f"delta{case}": delta,
        }
    with np.errstate(over="ignore", invalid="ignore"):  # e^1000 / Σ e^… is ∞ / ∞
        values["naive_p_shifted"] = np.exp(z + SHIFT) / np.exp(z + SHIFT).sum(1, keepdims=True)
    y_hat = 1 / (1 + np.exp(-np.array(SATURATING)))  # softmax((0, z))'s second entry is σ(z)
    values["sigmoid"] = y_hat
    values["delta_two_classes"] = y_hat - 0  # p − y at the second logit, whose target is 0
    values["delta_squared_error"] = (y_hat - 0) * y_hat * (1 - y_hat)  # chapter 5's (ŷ − y) ŷ(1 − ŷ)
    return values


def code_way(z, cross_entropy, sigmoid, mse_loss) -> dict[str, np.ndarray]:
    """Every case's J and δ = ∂J/∂z from ``cross_entropy`` (F.cross_entropy's signature), and ℓ_n of the first;
    at the SATURATING logits, δ of cross-entropy and of chapter 5's ½ (σ(z) − y)²."""
    values = {"loss": cross_entropy(z, torch.tensor(TARGET), reduction="none")}
    for case, (shift, smoothing, target) in CASES.items():
        logits = (z + shift).requires_grad_()
        J = cross_entropy(logits, torch.tensor(target), ignore_index=IGNORE_INDEX, label_smoothing=smoothing)
        J.backward()
        values |= {f"J{case}": J, f"delta{case}": logits.grad}
    second = torch.tensor(SATURATING, dtype=z.dtype).requires_grad_()
    logits = torch.stack([torch.zeros_like(second), second], 1)
    cross_entropy(logits, torch.zeros(len(SATURATING), dtype=torch.long), reduction="sum").backward()
    values["delta_two_classes"] = second.grad
    logit = torch.tensor(SATURATING, dtype=z.dtype).requires_grad_()
    (0.5 * mse_loss(sigmoid(logit), torch.zeros_like(logit), reduction="sum")).backward()
    values["delta_squared_error"] = logit.grad
    return {name: value.detach().numpy() for name, value in values.items()}


def three_ways() -> dict:
    z = torch.tensor(Z, dtype=torch.float64)
    t = torchbp.functional
    ways = {
        "NumPy": numpy_way(z.numpy()),
        "torchbp": code_way(z, t.cross_entropy, t.sigmoid, t.mse_loss),
        "autograd": code_way(z, F.cross_entropy, torch.sigmoid, F.mse_loss),
    }
    return dict(z=z.numpy(), values=ways["NumPy"], differences=agree(ways))


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "cross-entropy-example": "\n\n".join(
            [
                matrix("z", numbers["z"]),
                f"t = {TARGET}",
                matrix("y (one-hot t)", v["y"]),
                matrix("p = softmax(z)", v["p"]),
                matrix("ℓ = −Σ_c y log p", v["loss"]),
                matrix("J = (1/N) Σ_n ℓ_n", v["J"]),
                matrix("δ = ∂J/∂z = (p − y) / N", v["delta"]),
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
                matrix(f"y, smoothed with α = {SMOOTHING}", v["y_smoothed"]),
                matrix("J", v["J_smoothed"]),
                matrix("δ = (p − y) / N", v["delta_smoothed"]),
                f"t = {CASES['_ignored'][2]}: sample 2 ignored",
                matrix("y", v["y_ignored"]),
                matrix("J = ℓ_1 / 1", v["J_ignored"]),
                matrix("δ = (p Σ_c y − y) / 1", v["delta_ignored"]),
            ]
        ),
        "cross-entropy-saturation": "\n\n".join(
            [
                matrix("z, the second logit; the first is 0 and the target is the first class", SATURATING),
                matrix("ŷ = p_2 = σ(z)", v["sigmoid"]),
                matrix("softmax with cross-entropy:  δ = p_2 − y_2 = ŷ", v["delta_two_classes"]),
                matrix("sigmoid with squared error (chapter 5):  δ = (ŷ − y) ŷ(1 − ŷ)", v["delta_squared_error"]),
            ]
        ),
        "cross-entropy-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "cross-entropy-example": "Softmax with cross-entropy: 2 samples × 3 classes, mean over the samples",
    "cross-entropy-stability": f"The same logits plus {SHIFT:g}",
    "cross-entropy-variants": "Label smoothing and ignore_index",
    "cross-entropy-saturation": "Two classes: cross-entropy's δ against chapter 5's, where the sigmoid saturates",
    "cross-entropy-three-ways": "NumPy, torchbp and autograd agree",
}

PATH = "torchbp/layers/cross_entropy.py"
CODE = [
    ("log p = z − logsumexp z (log-softmax)", PATH, "log_p = F.log_softmax(input, class_dim(input))"),
    ("ℓ_n = −Σ_c y_nc log p_nc", PATH, "terms = log_p * smoothed(target, label_smoothing, C)"),
    ('λ = g / count for "mean"', PATH, "minus_s = -(g / count)"),
    ("∂J/∂log p = −λ y", PATH, "u = minus_s * smoothed(target, label_smoothing, C)"),
    (
        "∂J/∂z_n = λ (p_n Σ_c y_nc − y_n)",
        "torchbp/layers/log_softmax.py",
        "return g.addcmul_(y, total, value=-1) if in_place",
    ),
    ("label smoothing: y ← (1 − α) y + α/C", PATH, "return q * (1 - label_smoothing) + per_class("),
    ("ignore_index: y_n = 0, and not counted", PATH, "counted = (target != ignore_index).unsqueeze(dim)"),
]
