"""python -m experiments.bench.verify_cost: what torchbp.verify costs on a small Function.

Verifies the README's example (a Swish on an 8 × 5 batch) three times in this
process: the first call includes torch.compile's first compilations (and the
import of its compiler), the later ones find its caches warm. Prints each
call's time and the second call's time per property.
"""

from __future__ import annotations

import platform
import time

import torch
import torch.nn.functional as F

import torchbp


class Swish(torch.autograd.Function):
    """y = x σ(x); dy/dx = σ(x) (1 + x (1 − σ(x))): the README's example."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * s * (1 + x * (1 - s))


def main() -> None:
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    print(
        f"torchbp.verify on Swish (8 × 5): torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    reports = []
    for call in ("first (compiles)", "second", "third"):
        start = time.perf_counter()
        reports.append(torchbp.verify(Swish.apply, F.silu, x))
        total = time.perf_counter() - start
        fixed, dynamic = reports[-1]["compile"].seconds, reports[-1]["compile-dynamic"].seconds
        print(
            f"{call:17} {total:5.2f} s: compile {fixed:5.2f} s, compile-dynamic {dynamic:5.2f} s, the other "
            f"properties {total - fixed - dynamic:4.2f} s ({'ok' if reports[-1].ok else 'FAIL'})"
        )
    second = reports[1]
    slowest = sorted(second.rows, key=lambda row: -row.seconds)
    print("second call, per property: " + ", ".join(f"{row.name} {row.seconds:.2f} s" for row in slowest))


if __name__ == "__main__":
    main()
