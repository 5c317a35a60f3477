"""Properties under the settings a model runs in: autocast, memory, in-place writes, CUDA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchbp.check import SameRandomness, as_tuple
from torchbp.compare import DEFAULT_RTOL
from torchbp.verification.outcome import PROPERTIES, Failed, NotApplicable, Skipped, fix_for, one_line, verifies
from torchbp.verification.subject import Run, Subject, custom_nodes

MEMORY_RATIO = 1.5
AUTOCAST = {"cpu": torch.bfloat16, "cuda": torch.float16}


def _under_autocast(subject: Subject, device: str) -> str:
    """fn and the reference under autocast on ``device``, from float32 inputs: the same output dtypes and
    values to the autocast dtype's tolerance; a backward that runs and gives each input a finite gradient
    of its dtype where the reference's is finite. (The gradients' values are the float32 property's.)"""
    assert subject.reference is not None  # the callers return NotApplicable without one
    dtype = AUTOCAST[device]
    sides = []
    randomness = SameRandomness()
    for fn in (subject.fn, subject.reference):
        randomness.replay()
        inputs = subject.inputs(torch.float32, device=device)
        with torch.autocast(device, dtype=dtype):
            outputs = as_tuple(fn(*inputs))
        sides.append(Run(inputs, outputs, subject.gradients(outputs, inputs)))  # the backward outside, as usual
    mine, theirs = sides
    measured = subject.compare(subject.pairs(mine, theirs, wrt=()), rtol=DEFAULT_RTOL[dtype])
    for i, g, reference_g in zip(subject.differentiable, mine.grads, theirs.grads):
        if g.dtype != reference_g.dtype or not torch.equal(g.isfinite(), reference_g.isfinite()):
            raise Failed(
                f"inputs[{i}].grad: {g.dtype}, {'' if g.isfinite().all() else 'not '}finite, where the "
                f"reference's is {reference_g.dtype}, {'' if reference_g.isfinite().all() else 'not '}finite"
            )
    dtypes = ", ".join(str(out.dtype).removeprefix("torch.") for out in theirs.outputs if isinstance(out, torch.Tensor))
    return f"{str(dtype).removeprefix('torch.')} on {device}, output {dtypes} as the reference's: {measured}"


@verifies(
    "autocast",
    "a cast in forward (.to(float32), .to(x.dtype)) that undoes autocast's, or operands of two dtypes: let "
    "autocast's ops choose the dtype; a backward that mixes dtypes needs torch.amp.custom_fwd / custom_bwd",
)
def autocast(subject: Subject) -> str:
    """Under autocast (bfloat16 on CPU) the output's dtype and values are the reference's, and the backward runs."""
    if subject.reference is None:
        raise NotApplicable("no reference: autocast's dtype for fn is whatever the reference's is")
    return _under_autocast(subject, "cpu")


class Saved(NamedTuple):
    """One tensor saved for the backward: its bytes (a view's own elements, not its base's), its shape, and
    whether fn's forward made it (an output or a tensor of its own, rather than an input or a view of one)."""

    bytes: int
    shape: torch.Size
    made: bool


def saved_tensors(fn: Callable[..., Any], inputs: list[Any]) -> tuple[list[Saved], tuple[Any, ...]]:
    """The tensors ``fn`` saves for its backward, through save_for_backward (seen by saved-tensor hooks)
    and stashed on an autograd.Function's ctx (a tensor saved twice counts once), and fn's outputs."""
    saved: dict[tuple[int, torch.Size, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[(t.data_ptr(), t.shape, t.stride(), t.dtype)] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = as_tuple(fn(*inputs))
    for node in custom_nodes(outputs):
        for value in vars(node).values():
            contents = (
                value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            )
            for item in contents:  # a tensor kept on ctx, or in a list, tuple or dict kept there
                if isinstance(item, torch.Tensor):
                    pack(item)
    given = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    made = [
        Saved(t.numel() * t.element_size(), t.shape, t.untyped_storage().data_ptr() not in given)
        for t in saved.values()
    ]
    return made, outputs


def saved_bytes(fn: Callable[..., Any], inputs: list[Any]) -> int:
    """Bytes of the tensors ``fn`` saves for its backward (see :func:`saved_tensors`)."""
    return sum(t.bytes for t in saved_tensors(fn, inputs)[0])


@verifies(
    "memory",
    "saving the whole input where the backward reads a part of it, or saving what can be recomputed cheaply",
)
def memory(subject: Subject) -> str:
    """The bytes saved for backward are at most 1.5× the reference's, beside one tensor the size of an input
    or output that the forward made (an output, or the derivative saved to spare the backward work: a speed
    trade, not waste); or, with ``memory_ratio``, at most that ratio of the reference's."""
    if subject.reference is None:
        raise NotApplicable("no reference to measure against")
    inputs = subject.inputs()
    mine, outputs = saved_tensors(subject.fn, inputs)
    theirs = saved_bytes(subject.reference, subject.inputs())
    total = sum(t.bytes for t in mine)
    measured = f"{total} bytes saved where the reference saves {theirs}"
    if subject.memory_ratio is not None:
        if total > subject.memory_ratio * theirs:
            raise Failed(f"{measured}: more than the {subject.memory_ratio}× asked")
        return measured
    shapes = {t.shape for t in (*inputs, *outputs) if isinstance(t, torch.Tensor)}
    spare = max((t.bytes for t in mine if t.made and t.shape in shapes), default=0)
    if total - spare > MEMORY_RATIO * theirs:
        beside = f" beside one input- or output-sized tensor of {spare} bytes the forward made" if spare else ""
        raise Failed(f"{measured}: more than {MEMORY_RATIO}×{beside} (verify(..., memory_ratio=) sets the limit)")
    if total > MEMORY_RATIO * theirs:
        return (
            f"{measured}: within {MEMORY_RATIO}× beside one tensor of {spare} bytes, the size of an input or "
            "output, that the forward made and saved (a derivative kept to spare the backward work, say)"
        )
    return measured


VERSION_ERROR = "modified by an inplace operation"
VIEW_ERROR = "This view was created inside a custom Function"  # PyTorch's words for a view written in place


@verifies(
    "in-place",
    "a tensor kept on ctx (ctx.x = x) instead of ctx.save_for_backward(x): autograd cannot see it change; "
    "a forward that writes into its input must say so with ctx.mark_dirty",
)
def in_place(subject: Subject) -> str:
    """The forward leaves its inputs alone, and an input or output written in place after the forward is
    refused (by the backward's version check, or by PyTorch at the write: an output that is a view made
    inside the Function) or not read by the backward."""
    baseline = subject.baseline
    targets = [("inputs", i) for i in subject.tensors if subject.examples[i].is_floating_point()]
    targets += [("output", j) for j, out in enumerate(baseline.outputs) if isinstance(out, torch.Tensor)]
    refused = unread = 0
    for kind, k in targets:
        inputs = subject.inputs()
        outputs = as_tuple(subject.fn(*inputs))
        _unchanged_by_forward(subject, inputs)
        written = (inputs if kind == "inputs" else outputs)[k]
        try:
            with torch.no_grad():
                written.mul_(2).add_(1)  # new values for every element, and a new version
        except RuntimeError as error:  # a view made inside a Function: PyTorch refuses the write itself
            if VIEW_ERROR not in str(error):
                raise
            refused += 1
            continue
        try:
            grads = subject.gradients(outputs, inputs, upstream=subject.upstream(baseline.outputs))
        except RuntimeError as error:
            if VERSION_ERROR not in str(error) and VIEW_ERROR not in str(error):
                raise
            refused += 1
            continue
        try:
            subject.compare(
                [(f"inputs[{i}].grad", g, b) for i, g, b in zip(subject.differentiable, grads, baseline.grads)]
            )
        except Failed as wrong:
            raise Failed(
                f"{kind}[{k}] was written in place after the forward; the backward read the new values "
                f"without an error: {wrong}"
            ) from None
        unread += 1
    return f"{len(targets)} tensors written after the forward: {refused} refused, {unread} not read by the backward"


def _unchanged_by_forward(subject: Subject, inputs: list[Any]) -> None:
    """fn's forward left every input as it was given."""
    for i, (x, example) in enumerate(zip(inputs, subject.inputs())):
        if isinstance(x, torch.Tensor) and not bool(((x.detach() == example) | (x.isnan() & example.isnan())).all()):
            custom_op = isinstance(subject.fn, torch._library.custom_ops.CustomOpDef)
            raise Failed(
                f"fn's forward wrote into inputs[{i}]: a Function that changes its input must "
                "ctx.mark_dirty it, and most should not change it at all",
                fix="a custom op that writes into an input must name it in mutates_args (see opcheck-schema); "
                "better, write into a new tensor"
                if custom_op
                else "write into a new tensor; a Function that must change its input says so with ctx.mark_dirty",
            )


# The rows run again on the GPU, each held to fn eagerly there: torch.func and the compiler.
ON_THE_DEVICE = ("vmap", "vmap-grad", "jacrev", "jvp", "compile", "compile-dynamic")
GPU = "cuda"  # the row's device (torchbp's tests run the row's logic on the CPU by setting it)


@verifies(
    "cuda",
    "a tensor created on the CPU inside forward or backward (torch.zeros(n) without device=)",
)
def cuda(subject: Subject) -> str:
    """On a CUDA device: the reference's values and gradients in float32, and under float16 autocast; then
    torch.func's and the compiler's rows there."""
    if GPU == "cuda" and not torch.cuda.is_available():
        raise Skipped("no CUDA device here")
    if subject.reference is None:
        cpu = subject.run(subject.fn, subject.inputs(torch.float32))
        gpu = subject.run(subject.fn, subject.inputs(torch.float32, device=GPU))
        gpu = gpu._replace(outputs=tuple(out.cpu() for out in gpu.outputs), grads=[g.cpu() for g in gpu.grads])
        measured = f"float32 against fn on the CPU: {subject.compare(subject.pairs(gpu, cpu))}"
    else:
        values = subject.compare(subject.pairs(*subject.run_both(torch.float32, device=GPU)))
        measured = f"float32: {values}; {_under_autocast(subject, GPU)}"
    return f"{measured}; {_rows_on(subject, GPU)}"


def _rows_on(subject: Subject, device: str) -> str:
    """The rows of ON_THE_DEVICE that apply and are not skipped, run again with the inputs on ``device``; the
    first failure fails the row, named with where it happened."""
    there = subject.on(device)
    ran = []
    for name in ON_THE_DEVICE:
        if name in subject.skipped:
            continue
        prop = PROPERTIES[name]
        try:
            prop.check(there)
        except (NotApplicable, Skipped):
            continue
        except Failed as failed:
            raise Failed(f"{name} on {device}: {failed}", fix=failed.fix or prop.fix) from None
        except Exception as error:  # fn broke there: that is what was measured
            message = one_line(error)
            raise Failed(
                f"{name} on {device} raised {type(error).__name__}: {message}", fix_for(message, prop)
            ) from None
        ran.append(name)
    return (
        f"{', '.join(ran)} on {device} as eagerly there"
        if ran
        else f"no torch.func or compiler row applies on {device}"
    )
