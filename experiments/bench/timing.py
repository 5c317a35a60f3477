"""Paired timing: A and B back to back, their order alternating, so a slow moment of a shared machine hits both."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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


def quantiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3
