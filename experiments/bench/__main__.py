"""python -m experiments.bench: torchbp against the native way, paired and interleaved.

Each case times two callables A (torchbp) and B (the reference) on the same
model and data in the same process: warm-up, then repetitions in which A and
B run back to back, their order alternating, so a slow moment of a shared
machine hits both. The figure reported is the median of the per-repetition
ratios A / B, with the 25th and 75th percentiles as the spread.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

from experiments.bench.cases import CASES, Case
from experiments.bench.peak_memory import measure_peak_memory_here, peak_memory
from experiments.bench.peers import installed
from experiments.bench.timing import in_blocks, paired_times, quantiles


def run(cases: list[Case], repeats: int, warmup: int) -> str:
    lines = [
        f"torchbp benchmark: torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{repeats} paired repetitions after {warmup} warm-up",
        "",
        "| case | A | B | A median | B median | A / B median | A / B p25–p75 | target | met | peak memory A / B "
        "| compile A / B |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        if case.requires is not None and not installed(case.requires):
            lines.append(f"| {case.name} | {case.a} | {case.b} | skipped: {case.requires} is not installed |||||||")
            print(lines[-1], file=sys.stderr)
            continue
        a, b = case.make()
        compile_seconds = "-"
        if hasattr(a, "compile_seconds"):  # excluded from the times below
            compile_seconds = f"{a.compile_seconds:.1f} s / {b.compile_seconds:.1f} s"
        memory = "-"
        if case.memory is not None:
            setup, variant = case.memory
            ours, native = peak_memory(setup, variant), peak_memory(setup, "native")
            ratio_memory = ours / max(native, 1)
            memory = f"{ours / 2**20:.1f} / {native / 2**20:.1f} MiB = {ratio_memory:.3f}"
            if case.memory_target is not None:
                memory += f" (≤ {case.memory_target}: {'yes' if ratio_memory <= case.memory_target else 'NO'})"
        a, b = in_blocks(a, b, 0.02)
        times = paired_times(a, b, repeats, warmup)
        ratio = quantiles([ta / tb for ta, tb in times])
        a_median = statistics.median(t for t, _ in times)
        b_median = statistics.median(t for _, t in times)
        met = "yes" if ratio[1] <= case.target else "NO"
        lines.append(
            f"| {case.name} | {case.a} | {case.b} | {a_median * 1e3:.2f} ms | {b_median * 1e3:.2f} ms "
            f"| {ratio[1]:.3f} | {ratio[0]:.3f}–{ratio[2]:.3f} | ≤ {case.target} | {met} | {memory} "
            f"| {compile_seconds} |"
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
    # Every compiled case compiles its two models anew; past the recompile limit torch.compile would
    # run them eagerly and say nothing, so the limit is raised and reaching it is made an error.
    torch._dynamo.config.recompile_limit = 4 * len(cases)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    table = run(cases, args.repeats, args.warmup)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
