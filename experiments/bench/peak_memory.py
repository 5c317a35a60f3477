"""Peak memory of a training step: :func:`peak_memory` starts a fresh process, which runs
:func:`measure_peak_memory_here`."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torchbp
from experiments.bench.cases import TRAINING_SETUPS, VARIANTS, training_step


def peak_memory(setup: str, variant: str) -> int:
    """Peak bytes in use during one training step, measured in a fresh process.

    The process loads what the step loads lazily (kernels and their code, thread
    pools, torchbp's modules) by two steps of a throwaway copy of the same model,
    loss and data, which it then deletes; notes its resident memory, builds the
    model and data, takes two warm-up steps, resets the
    kernel's high-water mark of its resident memory (/proc/self/clear_refs),
    takes one step and reports the high-water mark less the resident memory
    noted before the model was built: parameters, data, gradients, activations
    and temporaries. Allocations of 64 KiB and more are mapped and unmapped one by
    one (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at
    once. Linux only.
    """
    command = [sys.executable, "-m", "experiments.bench", "--peak-memory-of", setup, variant]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    completed = subprocess.run(
        command, capture_output=True, text=True, check=True, env=environment, cwd=Path(__file__).resolve().parents[2]
    )  # the repository
    return int(completed.stdout.split()[-1])


def _resident(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def measure_peak_memory_here(setup: str, variant: str) -> int:
    """The measurement :func:`peak_memory` runs in its fresh process."""

    def build() -> Callable[[], None]:
        model, loss_fn, x, y = TRAINING_SETUPS[setup]()
        if variant != "native":
            model, loss_fn = VARIANTS[variant](model), torchbp.convert(loss_fn)
        return training_step(model, loss_fn, x, y)

    # Steps of a throwaway copy load what torch loads lazily (the kernels this step calls, and their
    # code, thread pools), which is no part of a step's memory; a smaller model with another loss
    # would leave some of it to be loaded, and counted, in the measured step.
    throwaway = build()
    throwaway(), throwaway()
    del throwaway
    gc.collect()
    baseline = _resident("VmRSS:")
    step = build()
    step(), step()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    step()
    return _resident("VmHWM:") - baseline
