"""Convolution, worked on a 1-channel 4×4 image with a 2×2 kernel (torchbp/layers/conv2d.py).

z = W ⋆ x + b, stride 1, no padding; given δ = ∂J/∂z, ∂J/∂x is the transposed
convolution of δ with W, ∂J/∂W the correlation of δ with x, and ∂J/∂b = Σ δ.
Written as a matrix, z = A x + b with A 9×16, and ∂J/∂x = Aᵀ δ: hence "transposed".
The same x, W and δ at stride 2 and padding 1 show the general rule: δ spread
with s − 1 zeros, then the same transposed convolution, then the padding cropped.
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
BY_HAND = [(0, 0), (1, 1)]  # the entries of ∂J/∂x worked term by term: a corner and a centre
STRIDED = dict(stride=2, padding=1)  # the same 4×4 x and 2×2 W give a 3×3 z again, so the same δ fits


def numpy_correlate(image, kernel, stride=1):
    """Σ_{i,j} kernel[i,j] image[h·s + i, w·s + j] at every (h, w) where the kernel fits."""
    kH, kW = kernel.shape
    return np.array(
        [
            [(kernel * image[h : h + kH, w : w + kW]).sum() for w in range(0, image.shape[1] - kW + 1, stride)]
            for h in range(0, image.shape[0] - kH + 1, stride)
        ]
    )


def numpy_matrix(W, height, width):
    """A: row h·(width − k + 1) + w holds W at the inputs window (h, w) reads, so that z = A x, x flattened."""
    k = W.shape[0]
    out_h, out_w = height - k + 1, width - k + 1
    A = np.zeros((out_h * out_w, height * width))
    for h in range(out_h):
        for w in range(out_w):
            window = np.zeros((height, width))
            window[h : h + k, w : w + k] = W
            A[h * out_w + w] = window.reshape(-1)
    return A


def numpy_spread(delta, s):
    """δ with s − 1 zeros between neighbours: each δ_hw where its window starts."""
    spread = np.zeros((s * (delta.shape[0] - 1) + 1, s * (delta.shape[1] - 1) + 1))
    spread[::s, ::s] = delta
    return spread


def numpy_way(x, W, b, delta) -> dict[str, np.ndarray]:
    k = W.shape[0]
    delta_padded = np.pad(delta, k - 1)  # k − 1 zeros on every side: (5, 5)
    W_rotated = W[::-1, ::-1]  # W turned by 180°
    A = numpy_matrix(W, *x.shape)
    s, p = STRIDED["stride"], STRIDED["padding"]
    x_pad = np.pad(x, p)
    spread = numpy_spread(delta, s)
    dJ_dx_pad = numpy_correlate(np.pad(spread, k - 1), W_rotated)  # the stride-1 transposed convolution: (6, 6)
    return dict(
        z=numpy_correlate(x, W) + b,
        delta_padded=delta_padded,
        W_rotated=W_rotated,
        dJ_dx=numpy_correlate(delta_padded, W_rotated),  # the transposed convolution: (4, 4)
        dJ_dW=numpy_correlate(x, delta),  # ∂J/∂W[i,j] = Σ_{h,w} δ[h,w] x[h + i, w + j]: (2, 2)
        dJ_db=delta.sum(),
        A=A,
        z_by_A=(A @ x.reshape(-1) + b).reshape(delta.shape),  # z = A x + b
        dJ_dx_by_A=(A.T @ delta.reshape(-1)).reshape(x.shape),  # ∂J/∂x = Aᵀ δ
        z_strided=numpy_correlate(x_pad, W, s) + b,
        delta_spread=spread,
        dJ_dx_pad_strided=dJ_dx_pad,
        dJ_dx_strided=dJ_dx_pad[p : p + x.shape[0], p : p + x.shape[1]],  # the padding cropped
        dJ_dW_strided=numpy_correlate(x_pad, spread),  # the spread δ slid over x_pad
    )


def code_way(x, W, b, delta, conv2d, **options) -> dict[str, np.ndarray]:
    """z and the three gradients from ``conv2d`` (F.conv2d's signature), on a batch of one sample, one channel."""
    x, W, b = x[None, None].clone().requires_grad_(), W[None, None].clone().requires_grad_(), b.clone().requires_grad_()
    z = conv2d(x, W, b, **options)
    z.backward(delta[None, None])
    values = dict(z=z[0, 0], dJ_dx=x.grad[0, 0], dJ_dW=W.grad[0, 0], dJ_db=b.grad[0])
    return {name: value.detach().numpy() for name, value in values.items()}


def both_cases(x, W, b, delta, conv2d) -> dict[str, np.ndarray]:
    """The example's z and gradients at stride 1, and at STRIDED under names ending in _strided."""
    strided = code_way(x, W, b, delta, conv2d, **STRIDED)
    return code_way(x, W, b, delta, conv2d) | {f"{name}_strided": strided[name] for name in ("z", "dJ_dx", "dJ_dW")}


def three_ways() -> dict:
    x, W, b, delta = (torch.tensor(t, dtype=torch.float64) for t in (X, WEIGHT, [BIAS], DELTA))
    numbers = numpy_way(x.numpy(), W.numpy(), BIAS, delta.numpy())
    ways = {
        "NumPy": numbers,
        "torchbp": both_cases(x, W, b, delta, torchbp.functional.conv2d),
        "autograd": both_cases(x, W, b, delta, F.conv2d),
    }
    differences = agree(ways)
    differences["z = A x + b"] = float(np.abs(numbers["z_by_A"] - numbers["z"]).max())
    differences["∂J/∂x = Aᵀ δ"] = float(np.abs(numbers["dJ_dx_by_A"] - numbers["dJ_dx"]).max())
    return dict(x=x.numpy(), W=W.numpy(), delta=delta.numpy(), values=numbers, differences=differences)


def sparse(name: str, value: np.ndarray) -> str:
    """A named matrix of few distinct entries, each in 5 characters, its zeros as dots, so that its pattern shows."""
    rows = value.reshape(-1, value.shape[-1])
    lines = ("".join(f"{v:>5g}" if v else "    ·" for v in row) for row in rows)
    return f"{name}  ({'×'.join(map(str, value.shape))})\n" + "\n".join(lines)


def by_hand(delta: np.ndarray, W: np.ndarray, u: int, v: int) -> str:
    """∂J/∂x[u,v] = Σ δ[h,w] W[u − h, v − w] over the windows that cover (u, v), term by term."""
    k = W.shape[0]
    terms = [(h, w) for h in range(delta.shape[0]) for w in range(delta.shape[1]) if 0 <= u - h < k and 0 <= v - w < k]
    name = f"∂J/∂x[{u},{v}] = "
    symbols = " + ".join(f"δ[{h},{w}] W[{u - h},{v - w}]" for h, w in terms)
    numbers = " + ".join(f"({delta[h, w]:g})({W[u - h, v - w]:g})" for h, w in terms)
    total = sum(delta[h, w] * W[u - h, v - w] for h, w in terms)
    return f"{name}{symbols}\n{' ' * (len(name) - 2)}= {numbers}\n{' ' * (len(name) - 2)}= {total:.6f}"


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    s, p = STRIDED["stride"], STRIDED["padding"]
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
        "conv2d-matrix": "\n\n".join(
            [
                sparse("A: row 3h + w holds W where window (h, w) reads x (x flattened row by row)", v["A"]),
                matrix("z = A x + b, as 3×3", v["z_by_A"]),
                matrix("Aᵀ δ, as 4×4: ∂J/∂x", v["dJ_dx_by_A"]),
            ]
        ),
        "conv2d-by-hand": "\n\n".join(by_hand(numbers["delta"], numbers["W"], u, w) for u, w in BY_HAND),
        "conv2d-strided": "\n\n".join(
            [
                matrix(f"z = W ⋆ x + b at stride {s}, padding {p}", v["z_strided"]),
                matrix(f"δ spread with s − 1 = {s - 1} zero between neighbours", v["delta_spread"]),
                matrix("∂J/∂x_pad = (W rotated) ⋆ (δ spread, padded with 1 zero)", v["dJ_dx_pad_strided"]),
                matrix(f"∂J/∂x: ∂J/∂x_pad with {p} cropped from every side", v["dJ_dx_strided"]),
                matrix("∂J/∂W = (δ spread) ⋆ x_pad", v["dJ_dW_strided"]),
            ]
        ),
        "conv2d-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "conv2d-forward": "Convolution of a 4×4 image with a 2×2 kernel: forward",
    "conv2d-backward": "Backward, from a given δ = ∂J/∂z",
    "conv2d-matrix": "The convolution as a 9×16 matrix A, and its transpose",
    "conv2d-by-hand": "Two entries of ∂J/∂x by hand: a corner and a centre",
    "conv2d-strided": f"Stride {STRIDED['stride']}, padding {STRIDED['padding']}: spread, transposed convolution, crop",
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
        "∂J/∂W: the correlation of δ with the input, δ ⋆ x",
        PATH,
        "grad = F.conv2d(a_by_group, delta_by_group, None, dilation, padding, stride, groups)",
    ),
    ("∂J/∂b = Σ δ", PATH, "grad_b = delta.sum((0, 2, 3))"),
]
