"""python -m experiments.bench: torchbp against the native way, paired and interleaved.

Each case times two callables A (torchbp) and B (the reference) on the same
model and data in the same process: warm-up, then repetitions in which A and
B run back to back, their order alternating, so a slow moment of a shared
machine hits both. The figure reported is the median of the per-repetition
ratios A / B, with the 25th and 75th percentiles as the spread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import torchbp
from experiments import seed
from experiments.registry import EXPERIMENTS
from torchbp.per_sample import per_sample_grad_norms, per_sample_grads


@dataclass
class Case:
    name: str
    a: str  # what A is
    b: str  # what B is
    make: Callable[[], tuple[Callable[[], object], Callable[[], object]]]
    target: float  # A / B at most
    memory_target: float | None = None  # peak memory A / B at most, where measured
    memory: tuple[str, str] | None = None  # (training setup, torchbp variant) whose peak memory to measure


def square_mlp(width: int, layers: int, seed: int = 0) -> torch.nn.Sequential:
    """``layers`` linear layers of width × width with sigmoids between them (none after the last)."""
    torch.manual_seed(seed)
    modules = []
    for _ in range(layers):
        modules += [torch.nn.Linear(width, width), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*modules[:-1])


def mlp_data(width: int, batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, width, generator=generator), torch.randn(batch, width, generator=generator)


def per_sample_against_torch_func(width: int, layers: int, batch: int, reuse: bool = False):
    """torchbp's per-sample gradients (into reused buffers with ``reuse``) against torch.func's."""

    def make():
        native = square_mlp(width, layers)
        hand = torchbp.convert(native)
        x, y = mlp_data(width, batch)
        loss_fn = torchbp.nn.MSELoss(reduction="sum")
        params = {name: p.detach() for name, p in native.named_parameters()}

        def one_sample_loss(params, x_n, y_n):
            return F.mse_loss(torch.func.functional_call(native, params, (x_n[None],)), y_n[None], reduction="sum")

        vmapped = torch.func.vmap(torch.func.grad(one_sample_loss), in_dims=(None, 0, 0))
        buffers = per_sample_grads(hand, loss_fn, x, y) if reuse else None
        return (lambda: per_sample_grads(hand, loss_fn, x, y, out=buffers)), (lambda: vmapped(params, x, y))

    return make


def norms_against_formed_gradients(width: int, layers: int, batch: int):
    def make():
        hand = torchbp.convert(square_mlp(width, layers))
        x, y = mlp_data(width, batch)
        loss_fn = torchbp.nn.MSELoss(reduction="sum")

        def formed():
            grads = per_sample_grads(hand, loss_fn, x, y)
            return torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))

        return (lambda: per_sample_grad_norms(hand, loss_fn, x, y)), formed

    return make


def training_after_per_sample_use(width: int, layers: int, batch: int):
    """A torchbp training step on a model that per-sample gradients were taken from, against
    the same step on an untouched twin: what ordinary training pays for the feature."""

    def make():
        used, untouched = torchbp.convert(square_mlp(width, layers)), torchbp.convert(square_mlp(width, layers))
        x, y = mlp_data(width, batch)
        loss_fn = torchbp.nn.MSELoss()
        per_sample_grads(used, loss_fn, x, y)
        per_sample_grad_norms(used, loss_fn, x, y)

        def train_step(model, optimizer):
            def step():
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()

            return step

        return (
            train_step(used, torch.optim.SGD(used.parameters(), lr=0.1)),
            train_step(untouched, torch.optim.SGD(untouched.parameters(), lr=0.1)),
        )

    return make


TRAINING_SETUPS = {
    # name: (model, loss, inputs, target)
    "derivation": lambda: (seed.network(EXPERIMENTS["seed"].defaults), seed.HalfSumSquaredError(),
                           *seed.samples(0, torch.float64, "cpu")),
    "mid": lambda: (square_mlp(256, 3), torch.nn.MSELoss(), *mlp_data(256, 64)),
    "compute-bound": lambda: (square_mlp(1024, 3), torch.nn.MSELoss(), *mlp_data(1024, 512)),
}


def training_step(model, loss_fn, x, y) -> Callable[[], None]:
    """Forward, loss, backward and an SGD update."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


VARIANTS = {"native": lambda m: m, "per-layer": torchbp.convert, "fused": torchbp.fuse}


def steps_against_native(setup: str, variant: str = "per-layer"):
    """A training step of the torchbp model (per-layer or fused) against native."""

    def make():
        model, loss_fn, x, y = TRAINING_SETUPS[setup]()
        hand = training_step(VARIANTS[variant](model), torchbp.convert(loss_fn), x, y)
        native = training_step(model, loss_fn, x, y)
        return hand, native

    return make


def training_case(title: str, setup: str, variant: str, target: float) -> Case:
    return Case(f"training step, {title}" + (", fused" if variant == "fused" else ""),
                "torchbp.fuse" if variant == "fused" else "torchbp per-layer", "native autograd",
                steps_against_native(setup, variant), target, 1.05, (setup, variant))


CASES = [
    Case("per-sample grads, 3×256 MLP, batch 256", "torchbp.per_sample_grads", "torch.func vmap(grad)",
         per_sample_against_torch_func(256, 3, 256), 0.5),
    Case("per-sample grads, 2×512 MLP, batch 1024", "torchbp.per_sample_grads", "torch.func vmap(grad)",
         per_sample_against_torch_func(512, 2, 1024), 0.5),
    Case("per-sample grads into reused buffers, 3×256 MLP, batch 256", "torchbp.per_sample_grads(out=)",
         "torch.func vmap(grad)", per_sample_against_torch_func(256, 3, 256, reuse=True), 0.5),
    Case("per-sample grads into reused buffers, 2×512 MLP, batch 1024", "torchbp.per_sample_grads(out=)",
         "torch.func vmap(grad)", per_sample_against_torch_func(512, 2, 1024, reuse=True), 0.5),
    Case("per-sample norms, 3×256 MLP, batch 256", "torchbp.per_sample_grad_norms", "norms of formed grads",
         norms_against_formed_gradients(256, 3, 256), 0.2),
    Case("per-sample norms, 2×512 MLP, batch 1024", "torchbp.per_sample_grad_norms", "norms of formed grads",
         norms_against_formed_gradients(512, 2, 1024), 0.2),
    Case("training step after per-sample use, 3×256 MLP, batch 64", "model per-sample grads were taken from",
         "untouched twin", training_after_per_sample_use(256, 3, 64), 1.05),
    training_case("derivation's 2-3-1 network, float64", "derivation", "per-layer", 1.0),
    training_case("derivation's 2-3-1 network, float64", "derivation", "fused", 1.0),
    training_case("mid MLP (3×256, batch 64)", "mid", "per-layer", 1.15),
    training_case("mid MLP (3×256, batch 64)", "mid", "fused", 1.15),
    training_case("compute-bound MLP (3×1024, batch 512)", "compute-bound", "per-layer", 1.03),
    training_case("compute-bound MLP (3×1024, batch 512)", "compute-bound", "fused", 1.03),
]


def in_blocks(a: Callable, b: Callable, seconds: float) -> tuple[Callable, Callable]:
    """``a`` and ``b`` each run the same number of times per call, enough for ``b`` to take about
    ``seconds``: fast steps are timed in blocks, and a ratio of blocks is a ratio of steps."""
    b()
    start = time.perf_counter()
    b()
    count = max(1, round(seconds / max(time.perf_counter() - start, 1e-9)))
    if count == 1:
        return a, b

    def block(fn):
        def run():
            for _ in range(count):
                fn()

        return run

    return block(a), block(b)


def paired_times(a: Callable, b: Callable, repeats: int, warmup: int) -> list[tuple[float, float]]:
    for _ in range(warmup):
        a(), b()
    times = []
    for rep in range(repeats):
        pair = {}
        for label, fn in (("a", a), ("b", b)) if rep % 2 == 0 else (("b", b), ("a", a)):
            start = time.perf_counter()
            fn()
            pair[label] = time.perf_counter() - start
        times.append((pair["a"], pair["b"]))
    return times


def peak_memory(setup: str, variant: str) -> int:
    """Peak bytes in use during one training step, measured in a fresh process.

    The process loads torch's lazily loaded parts with a small step, notes its
    resident memory, builds the model and data, takes two warm-up steps, resets the
    kernel's high-water mark of its resident memory (/proc/self/clear_refs),
    takes one step and reports the high-water mark less the resident memory
    noted before the model was built: parameters, data, gradients, activations
    and temporaries. Allocations of 64 KiB and more are mapped and unmapped one by
    one (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at
    once. Linux only.
    """
    command = [sys.executable, "-m", "experiments.bench", "--peak-memory-of", setup, variant]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    completed = subprocess.run(command, capture_output=True, text=True, check=True, env=environment,
                               cwd=Path(__file__).resolve().parent.parent)
    return int(completed.stdout.split()[-1])


def _resident(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def measure_peak_memory_here(setup: str, variant: str) -> int:
    """The measurement :func:`peak_memory` runs in its fresh process."""
    # A first small step of the same variant loads what torch loads lazily (kernels, thread pools),
    # which is no part of a step's memory.
    tiny_model, tiny_loss, tiny_x, tiny_y = square_mlp(8, 3), torch.nn.MSELoss(), *mlp_data(8, 4)
    if variant != "native":
        tiny_model, tiny_loss = VARIANTS[variant](tiny_model), torchbp.convert(tiny_loss)
    training_step(tiny_model, tiny_loss, tiny_x, tiny_y)()
    baseline = _resident("VmRSS:")
    model, loss_fn, x, y = TRAINING_SETUPS[setup]()
    if variant != "native":
        model, loss_fn = VARIANTS[variant](model), torchbp.convert(loss_fn)
    step = training_step(model, loss_fn, x, y)
    step(), step()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    step()
    return _resident("VmHWM:") - baseline


def quantiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def run(cases: list[Case], repeats: int, warmup: int) -> str:
    lines = [
        f"torchbp benchmark: torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{repeats} paired repetitions after {warmup} warm-up",
        "",
        "| case | A | B | A median | B median | A / B median | A / B p25–p75 | target | met | peak memory A / B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        a, b = case.make()
        memory = "-"
        if case.memory is not None:
            setup, variant = case.memory
            ours, native = peak_memory(setup, variant), peak_memory(setup, "native")
            ratio_memory = ours / max(native, 1)
            met_memory = "yes" if ratio_memory <= case.memory_target else "NO"
            memory = f"{ours / 2**20:.1f} / {native / 2**20:.1f} MiB = {ratio_memory:.3f} (≤ {case.memory_target}: {met_memory})"
        a, b = in_blocks(a, b, 0.02)
        times = paired_times(a, b, repeats, warmup)
        ratio = quantiles([ta / tb for ta, tb in times])
        a_median = statistics.median(t for t, _ in times)
        b_median = statistics.median(t for _, t in times)
        met = "yes" if ratio[1] <= case.target else "NO"
        lines.append(
            f"| {case.name} | {case.a} | {case.b} | {a_median * 1e3:.2f} ms | {b_median * 1e3:.2f} ms "
            f"| {ratio[1]:.3f} | {ratio[0]:.3f}–{ratio[2]:.3f} | ≤ {case.target} | {met} | {memory} |"
        )
        print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="paired repetitions (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs of each side (default 3)")
    parser.add_argument("--out", default="runs/bench.md", help="markdown file for the table (default runs/bench.md)")
    parser.add_argument("--only", metavar="TEXT", help="run the cases whose name contains TEXT")
    parser.add_argument("--peak-memory-of", nargs=2, metavar=("SETUP", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_memory_of:  # the fresh process of peak_memory()
        print(measure_peak_memory_here(*args.peak_memory_of))
        return 0
    if args.repeats < 4:
        parser.error("--repeats must be at least 4 (quartiles need them)")
    cases = [case for case in CASES if args.only is None or args.only in case.name]
    table = run(cases, args.repeats, args.warmup)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
