"""Properties of memory layout and size: non-contiguous inputs, and a batch of no samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from torchbp.check import as_tuple
from torchbp.verification.gradients import GRADCHECK, _first_line
from torchbp.verification.outcome import Failed, NotApplicable, verifies
from torchbp.verification.subject import Run, Subject


def transposed(x: torch.Tensor) -> torch.Tensor:
    """The same values with the dimensions' order in memory reversed (column-major for a matrix)."""
    order = list(reversed(range(x.dim())))
    return x.permute(order).contiguous().permute(order)


def strided(x: torch.Tensor) -> torch.Tensor:
    """The same values, every other element of a buffer twice as long along the last dimension (or the first)."""
    for dim in (x.dim() - 1, 0):
        if x.dim() and x.shape[dim] > 1:
            shape = list(x.shape)
            shape[dim] *= 2
            every_other = (slice(None),) * dim + (slice(None, None, 2),)
            view = torch.zeros(shape, dtype=x.dtype, device=x.device)[every_other]
            return view.copy_(x)
    return x


LAYOUTS = {"transposed": transposed, "strided": strided}


@verifies(
    "non-contiguous",
    "a .view() or a data_ptr walk that assumes a contiguous tensor: use .reshape(), or .contiguous() first",
)
def non_contiguous(subject: Subject) -> str:
    """The same outputs and gradients for transposed, strided and expanded inputs (and upstream gradients)."""
    baseline = subject.baseline
    tried: list[str] = []
    pairs: list[tuple[str, Any, Any]] = []
    for name, layout in LAYOUTS.items():
        inputs = subject.inputs(layout=layout)
        upstream = tuple(None if u is None else layout(u) for u in subject.upstream(baseline.outputs))
        if all(x.is_contiguous() for x in [*inputs, *upstream] if isinstance(x, torch.Tensor)):
            continue
        tried.append(name)
        run = subject.run(subject.fn, inputs, upstream=upstream)
        pairs += [(f"{row_name} ({name})", a, b) for row_name, a, b in subject.pairs(run, baseline)]
    expanded = _expanded(subject)
    if expanded is not None:
        tried.append("expanded")
        pairs += expanded
    if not tried:
        raise NotApplicable("every input is a scalar or has one element: there is no other layout")
    return f"{', '.join(tried)}: {subject.compare(pairs)}"


def _expanded(subject: Subject) -> list[tuple[str, Any, Any]] | None:
    """Inputs that are one sample expanded along the batch dimension (stride 0), against the same values
    materialised; the gradients are those of the one sample. None where it does not apply."""
    if not subject.batched or subject.batch_size < 2:
        return None

    def run(fn: Callable[..., Any], materialise: bool) -> Run:
        leaves = subject.inputs(samples=1)
        inputs = [
            x if dim is None else _expand(x, dim, subject.batch_size, materialise)
            for x, dim in zip(leaves, subject.batch_dims)
        ]
        outputs = as_tuple(fn(*inputs))
        return Run(leaves, outputs, subject.gradients(outputs, leaves))

    contiguous = run(subject.fn, materialise=True)
    try:
        expanded = run(subject.fn, materialise=False)
    except Exception as error:
        if subject.reference is not None:
            try:
                run(subject.reference, materialise=False)
            except Exception:
                return None  # the reference refuses expanded inputs too: the op does not allow them
        raise Failed(f"raised on expanded inputs: {type(error).__name__}: {_first_line(error)}") from None
    return [(f"{name} (expanded)", a, b) for name, a, b in subject.pairs(expanded, contiguous)]


def _expand(x: torch.Tensor, dim: int, size: int, materialise: bool) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = size
    expanded = x.expand(shape)
    return expanded.contiguous() if materialise else expanded


@verifies(
    "empty-batch",
    "a mean or a division by the batch size, or a reshape with -1, that breaks when it is 0",
)
def empty_batch(subject: Subject) -> str:
    """A batch of 0 samples gives the reference's outputs and gradients (zero for shared inputs), not an error."""
    if not subject.batched:
        raise NotApplicable(f"no input has a batch dimension ({subject.batch_origin()})")
    if subject.reference is not None:
        return subject.compare(subject.pairs(*subject.run_both(torch.float64, samples=0)))
    inputs = subject.inputs(samples=0)
    run = subject.run(subject.fn, inputs)
    if all(out.numel() == 0 for out in run.outputs if isinstance(out, torch.Tensor)):
        # With no output, Σ outputs · upstream is identically 0: every gradient is exactly zero.
        pairs = [
            (f"inputs[{i}].grad", g, torch.zeros_like(inputs[i])) for i, g in zip(subject.differentiable, run.grads)
        ]
        return f"every gradient is zero, as it must be with no output: {subject.compare(pairs)}"
    try:
        torch.autograd.gradcheck(subject.fn, inputs, **GRADCHECK)
    except GradcheckError as error:
        raise Failed(_first_line(error)) from None
    return "agrees with finite differences on an empty batch"
