"""Pooling, worked on one 4×4 plane (torchbp/layers/max_pool2d.py, avg_pool2d.py, adaptive_avg_pool2d.py).

Max pooling a_hw = max of window (h, w), at position m_hw: given g = ∂J/∂a, ∂J/∂x_uv = Σ_{h,w: m_hw = (u,v)} g_hw,
g routed to each window's max and added where windows share it. Average pooling a_hw = (1/M_hw) Σ window: each
element of window (h, w) gets g_hw / M_hw, added where windows overlap; M counts the padding or not as
count_include_pad says. Adaptive average pooling chooses its windows [⌊h·H/h_out⌋, ⌈(h + 1)·H/h_out⌉).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

X = [[1.0, 3.0, 2.0, 0.0], [4.0, 0.0, 5.0, 5.0], [6.0, 2.0, 1.0, 1.0], [0.0, 1.0, 3.0, 2.0]]  # two 5s: a tie
G = [[0.1, -0.2], [0.25, 0.5]]  # g = ∂J/∂a for every 2×2 output, as the layers above would hand it down
G_3 = [[0.1, -0.2, 0.3], [0.25, 0.3, -0.1], [0.2, 0.15, -0.3]]  # g for the adaptive pooling's 3×3 output
MAX = dict(kernel_size=2, stride=2)
OVERLAPPING = dict(kernel_size=3, stride=1)
AVERAGE = dict(kernel_size=2, stride=2)
PADDED = dict(kernel_size=3, stride=2, padding=1)
ADAPTIVE = (3, 3)


def windows(size: int, k: int, s: int, p: int = 0) -> list[range]:
    """Along one dimension, each window's positions in the input padded by p."""
    return [range(h * s, h * s + k) for h in range((size + 2 * p - k) // s + 1)]


def numpy_max_pool(x, g, kernel_size, stride):
    """a, the (row, column) m of each window's max is at (the first in the window, row by row, among equal values),
    and ∂J/∂x: each g_hw added at m_hw."""
    rows, columns = windows(x.shape[0], kernel_size, stride), windows(x.shape[1], kernel_size, stride)
    m = np.zeros((len(rows), len(columns), 2), dtype=int)
    dJ_dx = np.zeros_like(x)
    for h, r in enumerate(rows):
        for w, c in enumerate(columns):
            i, j = np.unravel_index(x[np.ix_(r, c)].argmax(), (kernel_size, kernel_size))  # argmax: the first
            m[h, w] = r[i], c[j]
            dJ_dx[r[i], c[j]] += g[h, w]
    return x[m[..., 0], m[..., 1]], m, dJ_dx


def numpy_avg_pool(x, g, kernel_size, stride, padding=0, count_include_pad=True):
    """a, the divisor M and ∂J/∂x: each element of window (h, w) gets g_hw / M_hw; the padding's share is lost."""
    x_pad = np.pad(x, padding)
    inside = np.pad(np.ones_like(x), padding)  # 1 on the input, 0 on the padding
    rows, columns = windows(x.shape[0], kernel_size, stride, padding), windows(x.shape[1], kernel_size, stride, padding)
    a, M = np.zeros((len(rows), len(columns))), np.zeros((len(rows), len(columns)))
    dJ_dx_pad = np.zeros_like(x_pad)
    for h, r in enumerate(rows):
        for w, c in enumerate(columns):
            M[h, w] = kernel_size**2 if count_include_pad else inside[np.ix_(r, c)].sum()
            a[h, w] = x_pad[np.ix_(r, c)].sum() / M[h, w]
            dJ_dx_pad[np.ix_(r, c)] += g[h, w] / M[h, w]
    return a, M, dJ_dx_pad[padding : padding + x.shape[0], padding : padding + x.shape[1]]


def adaptive_windows(out: int, size: int) -> list[range]:
    """Native's windows: [⌊h·size/out⌋, ⌈(h + 1)·size/out⌉) for each output h."""
    return [range(h * size // out, -(-(h + 1) * size // out)) for h in range(out)]


def numpy_adaptive_avg_pool(x, g, output_size):
    rows, columns = adaptive_windows(output_size[0], x.shape[0]), adaptive_windows(output_size[1], x.shape[1])
    a, dJ_dx = np.zeros(output_size), np.zeros_like(x)
    for h, r in enumerate(rows):
        for w, c in enumerate(columns):
            a[h, w] = x[np.ix_(r, c)].mean()
            dJ_dx[np.ix_(r, c)] += g[h, w] / (len(r) * len(c))
    return a, rows, dJ_dx


def numpy_way(x, g, g_3) -> dict[str, np.ndarray]:
    a_max, m_max, dJ_dx_max = numpy_max_pool(x, g, **MAX)
    a_overlap, m_overlap, dJ_dx_overlap = numpy_max_pool(x, g, **OVERLAPPING)
    a_avg, _, dJ_dx_avg = numpy_avg_pool(x, g, **AVERAGE)
    a_pad_in, M_pad_in, dJ_dx_pad_in = numpy_avg_pool(x, g, **PADDED, count_include_pad=True)
    a_pad_out, M_pad_out, dJ_dx_pad_out = numpy_avg_pool(x, g, **PADDED, count_include_pad=False)
    a_adaptive, adaptive_rows, dJ_dx_adaptive = numpy_adaptive_avg_pool(x, g_3, ADAPTIVE)
    return dict(
        a_max=a_max,
        m_max=m_max[..., 0] * x.shape[1] + m_max[..., 1],  # the flat index u·W + v, as native's
        rs_max=m_max,
        dJ_dx_max=dJ_dx_max,
        a_overlap=a_overlap,
        m_overlap=m_overlap[..., 0] * x.shape[1] + m_overlap[..., 1],
        rs_overlap=m_overlap,
        dJ_dx_overlap=dJ_dx_overlap,
        a_avg=a_avg,
        dJ_dx_avg=dJ_dx_avg,
        a_pad_in=a_pad_in,
        M_pad_in=M_pad_in,
        dJ_dx_pad_in=dJ_dx_pad_in,
        a_pad_out=a_pad_out,
        M_pad_out=M_pad_out,
        dJ_dx_pad_out=dJ_dx_pad_out,
        a_adaptive=a_adaptive,
        adaptive_rows=adaptive_rows,
        dJ_dx_adaptive=dJ_dx_adaptive,
    )


def code_way(x, g, g_3, max_pool2d, avg_pool2d, adaptive_avg_pool2d) -> dict[str, np.ndarray]:
    """Each pooling's a and ∂J/∂x, by functions of F.max_pool2d's, F.avg_pool2d's and F.adaptive_avg_pool2d's
    signatures, on a batch of one sample of one channel."""
    cases = {
        "max": (max_pool2d, MAX, g),
        "overlap": (max_pool2d, OVERLAPPING, g),
        "avg": (avg_pool2d, AVERAGE, g),
        "pad_in": (avg_pool2d, PADDED | dict(count_include_pad=True), g),
        "pad_out": (avg_pool2d, PADDED | dict(count_include_pad=False), g),
        "adaptive": (adaptive_avg_pool2d, dict(output_size=ADAPTIVE), g_3),
    }
    values: dict[str, torch.Tensor] = {}
    for name, (pool, options, upstream) in cases.items():
        x_ = x[None, None].clone().requires_grad_()
        if pool is max_pool2d:  # and native's m, as the flat index u·W + v into the plane
            a, m = pool(x_, **options, return_indices=True)
            values[f"m_{name}"] = m[0, 0]
        else:
            a = pool(x_, **options)
        a.backward(upstream[None, None])
        values |= {f"a_{name}": a[0, 0], f"dJ_dx_{name}": x_.grad[0, 0]}
    return {name: value.detach().numpy() for name, value in values.items()}


def three_ways() -> dict:
    x, g, g_3 = (torch.tensor(t, dtype=torch.float64) for t in (X, G, G_3))
    t = torchbp.functional
    ways = {
        "NumPy": numpy_way(x.numpy(), g.numpy(), g_3.numpy()),
        "torchbp": code_way(x, g, g_3, t.max_pool2d, t.avg_pool2d, t.adaptive_avg_pool2d),
        "autograd": code_way(x, g, g_3, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d),
    }
    return dict(x=x.numpy(), g=g.numpy(), g_3=g_3.numpy(), values=ways["NumPy"], differences=agree(ways))


def positions(name: str, m: np.ndarray) -> str:
    """The (row, column) each window picked, a window's a place in the line."""
    return f"{name}  ({'×'.join(map(str, m.shape[:2]))})\n" + "\n".join(
        "   " + "  ".join(f"({r},{c})" for r, c in row) for row in m
    )


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "pooling-max": "\n\n".join(
            [
                matrix("x", numbers["x"]),
                matrix("a = the max of each 2×2 window, stride 2", v["a_max"]),
                positions("m = where each max is, (row, column) in x", v["rs_max"]),
                matrix("g = ∂J/∂a", numbers["g"]),
                matrix("∂J/∂x: g_hw at m_hw, 0 elsewhere", v["dJ_dx_max"]),
            ]
        ),
        "pooling-overlap": "\n\n".join(
            [
                matrix("a = the max of each 3×3 window, stride 1", v["a_overlap"]),
                positions("m", v["rs_overlap"]),
                matrix("∂J/∂x, the same g: two g_hw added at each of two elements", v["dJ_dx_overlap"]),
            ]
        ),
        "pooling-average": "\n\n".join(
            [
                matrix("a = the mean of each 2×2 window, stride 2", v["a_avg"]),
                matrix("∂J/∂x: g_hw / 4 on each element of window (h, w)", v["dJ_dx_avg"]),
            ]
        ),
        "pooling-padding": "\n\n".join(
            [
                matrix("count_include_pad=True:  M", v["M_pad_in"]),
                matrix("a", v["a_pad_in"]),
                matrix("∂J/∂x", v["dJ_dx_pad_in"]),
                matrix("count_include_pad=False:  M", v["M_pad_out"]),
                matrix("a", v["a_pad_out"]),
                matrix("∂J/∂x", v["dJ_dx_pad_out"]),
            ]
        ),
        "pooling-adaptive": "\n\n".join(
            [
                "windows along rows and columns:  " + "  ".join(f"[{r.start}, {r.stop})" for r in v["adaptive_rows"]),
                matrix("a = adaptive_avg_pool2d(x, (3, 3))", v["a_adaptive"]),
                matrix("g = ∂J/∂a", numbers["g_3"]),
                matrix("∂J/∂x: g_hw / 4 on each element of window (h, w)", v["dJ_dx_adaptive"]),
            ]
        ),
        "pooling-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "pooling-max": "Max pooling of a 4×4 plane, 2×2 windows: g routed to each max",
    "pooling-overlap": "Overlapping windows, 3×3 at stride 1: one element, several windows",
    "pooling-average": "Average pooling, 2×2 windows: g spread as g/4",
    "pooling-padding": "3×3 windows, stride 2, padding 1: the divisor with and without the padding",
    "pooling-adaptive": "Adaptive average pooling to 3×3",
    "pooling-three-ways": "NumPy, torchbp and autograd agree",
}

MAX_PATH, AVG_PATH, ADAPTIVE_PATH = (
    f"torchbp/layers/{name}.py" for name in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
)
CODE = [
    ("max pooling: a and m, native's", MAX_PATH, "return torch.ops.aten.max_pool2d_with_indices(input"),
    (
        "∂J/∂x_uv = Σ_{h,w: m_hw = (u,v)} g_hw",
        MAX_PATH,
        "return plane.scatter_add(-1, m.flatten(-2), delta.flatten(-2)).view(input_shape)",
    ),
    ("average pooling: a = (1/M) Σ window", AVG_PATH, "output: torch.Tensor = torch.ops.aten.avg_pool2d("),
    (
        "M without the padding: count_include_pad=False",
        AVG_PATH,
        "start, end = start.clamp(min=0), end.clamp(max=size)",
    ),
    ("g / M", AVG_PATH, "delta = delta / (R[:, None] * C).to(delta.dtype)"),
    (
        "each window's g / M added to its elements",
        AVG_PATH,
        "return plane.scatter_add(-1, positions.expand_as(spread), spread)",
    ),
    ("adaptive windows [⌊h·H/h_out⌋, ⌈(h + 1)·H/h_out⌉)", ADAPTIVE_PATH, "return h * size // out, ((h + 1) * size"),
    (
        "adaptive: g / (k_h k_w)",
        ADAPTIVE_PATH,
        "delta = delta / (b_h - a_h).to(delta.dtype)[:, None] / (b_w - a_w).to(delta.dtype)",
    ),
]
