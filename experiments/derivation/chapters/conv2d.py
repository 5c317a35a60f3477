"""Convolution, worked on a 1-channel 4×4 image with a 2×2 kernel (torchbp/layers/conv2d.py).

z = W ⋆ x + b, stride 1, no padding; given δ = ∂J/∂z, ∂J/∂x is the transposed
convolution of δ with W, ∂J/∂W the correlation of x with δ, and ∂J/∂b = Σ δ.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

X = [[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 1.0], [2.0, 1.0, 0.0, 2.0], [1.0, 0.0, 1.0, 3.0]]
WEIGHT = [[1.0, -1.0], [2.0, 0.5]]
BIAS = 0.25
DELTA = [[0.1, -0.2, 0.3], [0.25, 0.3, -0.1], [0.2, 0.15, -0.3]]  # δ = ∂J/∂z, as the layers above would hand it down


def numpy_correlate(image, kernel):
    """Σ_{i,j} kernel[i,j] image[h + i, w + j] at every (h, w) where the kernel fits."""
    kH, kW = kernel.shape
    return np.array(
        [
            [(kernel * image[h : h + kH, w : w + kW]).sum() for w in range(image.shape[1] - kW + 1)]
            for h in range(image.shape[0] - kH + 1)
        ]
    )


def numpy_way(x, W, b, delta) -> dict[str, np.ndarray]:
    k = W.shape[0]
    delta_padded = np.pad(delta, k - 1)  # k − 1 zeros on every side: (5, 5)
    W_rotated = W[::-1, ::-1]  # W turned by 180°
    return dict(
        z=numpy_correlate(x, W) + b,
        delta_padded=delta_padded,
        W_rotated=W_rotated,
        dJ_dx=numpy_correlate(delta_padded, W_rotated),  # the transposed convolution: (4, 4)
        dJ_dW=numpy_correlate(x, delta),  # ∂J/∂W[i,j] = Σ_{h,w} δ[h,w] x[h + i, w + j]: (2, 2)
        dJ_db=delta.sum(),
    )


def code_way(x, W, b, delta, conv2d) -> dict[str, np.ndarray]:
    """z and the three gradients from ``conv2d`` (F.conv2d's signature), on a batch of one sample, one channel."""
    x, W, b = x[None, None].clone().requires_grad_(), W[None, None].clone().requires_grad_(), b.clone().requires_grad_()
    z = conv2d(x, W, b)
    z.backward(delta[None, None])
    values = dict(z=z[0, 0], dJ_dx=x.grad[0, 0], dJ_dW=W.grad[0, 0], dJ_db=b.grad[0])
    return {name: value.detach().numpy() for name, value in values.items()}


def three_ways() -> dict:
    x, W, b, delta = (torch.tensor(t, dtype=torch.float64) for t in (X, WEIGHT, [BIAS], DELTA))
    ways = {
        "NumPy": numpy_way(x.numpy(), W.numpy(), BIAS, delta.numpy()),
        "torchbp": code_way(x, W, b, delta, torchbp.functional.conv2d),
        "autograd": code_way(x, W, b, delta, F.conv2d),
    }
    return dict(x=x.numpy(), W=W.numpy(), delta=delta.numpy(), values=ways["NumPy"], differences=agree(ways))


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "conv2d-forward": "\n\n".join(
            [matrix("x", numbers["x"]), matrix("W", numbers["W"]), matrix("b", BIAS), matrix("z = W ⋆ x + b", v["z"])]
        ),
        "conv2d-backward": "\n\n".join(
            [
                matrix("δ = ∂J/∂z", numbers["delta"]),
                matrix("∂J/∂b = Σ δ", v["dJ_db"]),
                matrix("∂J/∂W = δ ⋆ x", v["dJ_dW"]),
                matrix("δ padded with 1 zero", v["delta_padded"]),
                matrix("W rotated by 180°", v["W_rotated"]),
                matrix("∂J/∂x = (W rotated) ⋆ (δ padded)", v["dJ_dx"]),
            ]
        ),
        "conv2d-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "conv2d-forward": "Convolution of a 4×4 image with a 2×2 kernel: forward",
    "conv2d-backward": "Backward, from a given δ = ∂J/∂z",
    "conv2d-three-ways": "NumPy, torchbp and autograd agree",
}

PATH = "torchbp/layers/conv2d.py"
CODE = [
    ("z = W ⋆ x + b", PATH, "z = F.conv2d(input, weight, bias, stride, padding, dilation, groups)"),
    (
        "∂J/∂x: the transposed convolution of δ with W",
        PATH,
        "return F.conv_transpose2d(delta, W, None, stride, padding, output_padding, groups, dilation)",
    ),
    (
        "∂J/∂W: the correlation of the input with δ",
        PATH,
        "grad = F.conv2d(a_by_group, delta_by_group, None, dilation, padding, stride, groups)",
    ),
    ("∂J/∂b = Σ δ", PATH, "grad_b = delta.sum((0, 2, 3))"),
]
