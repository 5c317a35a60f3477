"""torchbp.verify: one call that checks a hand-written backward everywhere a PyTorch op must work.

The properties, in the report's order, live by theme: ``gradients`` (against the
reference, finite differences, double backward, needs_input_grad), ``layouts``
(non-contiguous, empty batch), ``transforms`` (torch.func), ``compiled`` (torch.compile) and
``settings`` (autocast, memory, in-place writes, CUDA); ``outcome`` registers them. ``subject`` holds what
they share: fresh inputs in any form, one seeded upstream gradient, the comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from torchbp.check import as_tuple
from torchbp.compare import validate_tolerances

# Importing each theme registers its properties; the report lists them in this order.
from torchbp.verification import gradients, layouts, transforms, compiled, settings, custom_ops  # noqa: F401  # isort: skip
from torchbp.verification.outcome import PROPERTIES, Failed, NotApplicable, Property, Skipped, fix_for, one_line
from torchbp.verification.report import FAIL, NOT_APPLICABLE, PASS, SKIPPED, VerifyReport, VerifyRow
from torchbp.verification.subject import Subject

VERIFY_PROPERTIES: tuple[str, ...] = tuple(PROPERTIES)


def verify(
    fn: Callable[..., Any],
    reference: Callable[..., Any] | None,
    *inputs: Any,
    batch_dims: Sequence[int | None] | None = None,
    nondiff: Iterable[int] = (),
    once_differentiable: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    compile_backend: str = "inductor",
    seed: int = 0,
    memory_ratio: float | None = None,
) -> VerifyReport:
    """Check ``fn`` (typically ``MyFunction.apply``) against ``reference`` (a native expression of the
    same function, or None) on the example ``inputs``, one property at a time.

    Every property builds its own inputs from the examples (in float64 unless it
    says otherwise), so neither the examples nor any gradient on them change.
    With ``reference=None`` the properties that need one are ``not applicable``;
    gradcheck, double backward, the layouts, the transforms and in-place
    safety still run.

    Args:
        batch_dims: per input, the dimension that holds the batch, or None for an
            input shared by all samples (a weight). By default dimension 0 of the
            first floating-point tensor, and of every tensor with exactly its shape.
        nondiff: positions of floating-point inputs that are not differentiable
            (a target). By default the inputs that require grad are differentiated,
            or every floating-point tensor when none does.
        once_differentiable: the backward is not meant to be differentiated;
            double backward is then ``not applicable``.
        rtol, atol: tolerances of every comparison, in place of the per-dtype
            defaults of :mod:`torchbp.compare`.
        only, skip: the properties to run, or to leave out (reported ``skipped``);
            names from ``torchbp.VERIFY_PROPERTIES``.
        compile_backend: the backend of the ``compile`` property.
        seed: of the upstream gradients and tangents.
        memory_ratio: the ``memory`` property's limit, as a ratio of the reference's saved bytes. By default
            1.5×, plus one tensor the size of an input or output that the forward made (a derivative saved
            to spare the backward work is a sanctioned trade); given, the ratio alone.

    Returns:
        A :class:`VerifyReport`: ``.ok``, ``.rows``, ``str()`` for the table,
        ``.assert_ok()`` for a test.
    """
    names, skipped = _chosen(only, skip)
    subject = _subject(
        fn, reference, inputs, batch_dims, nondiff, once_differentiable, rtol, atol, compile_backend, seed, memory_ratio
    )
    subject.skipped = frozenset(skipped)
    rows = []
    # Grad mode on, whatever the caller's; the global random state seeded for the checks that draw from it
    # (gradgradcheck's upstream gradients, fn's own), and the caller's given back afterwards.
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=_cuda_devices()):
        torch.manual_seed(seed)
        _check_deterministic(subject)
        for name in names:
            if name in skipped:
                rows.append(VerifyRow(name, SKIPPED, "left out (skip=)"))
                continue
            rows.append(_run(PROPERTIES[name], subject))
    return VerifyReport(f"verify({subject.name})", rows, subject.describe_inputs())


def _cuda_devices() -> list[int]:
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    return list(range(torch.cuda.device_count())) if initialized else []


def _run(prop: Property, subject: Subject) -> VerifyRow:
    start = time.perf_counter()
    try:
        measured = prop.check(subject)
        row = VerifyRow(prop.name, PASS, measured)
    except Failed as failure:
        row = VerifyRow(prop.name, FAIL, str(failure), prop.fix if failure.fix is None else failure.fix)
    except NotApplicable as reason:
        row = VerifyRow(prop.name, NOT_APPLICABLE, str(reason))
    except Skipped as reason:
        row = VerifyRow(prop.name, SKIPPED, str(reason))
    except Exception as error:  # the function broke under this property: that is what it measured
        message = one_line(error)
        row = VerifyRow(prop.name, FAIL, f"raised {type(error).__name__}: {message}", fix_for(message, prop))
    return row._replace(seconds=time.perf_counter() - start)


def _chosen(only: Iterable[str] | None, skip: Iterable[str]) -> tuple[list[str], set[str]]:
    """The properties to report, in the report's order, and those of them to leave out."""
    only = [only] if isinstance(only, str) else only  # one name alone
    skip = {skip} if isinstance(skip, str) else set(skip)
    chosen = list(VERIFY_PROPERTIES if only is None else only)
    if not chosen:
        raise ValueError("verify: only= names no property; leave it out to run them all")
    unknown = [name for name in [*chosen, *skip] if name not in PROPERTIES]
    if unknown:
        raise ValueError(
            f"verify: no property named {', '.join(map(repr, unknown))}; "
            f"the properties are {', '.join(VERIFY_PROPERTIES)}"
        )
    return [name for name in VERIFY_PROPERTIES if name in chosen], skip


def _subject(
    fn: Callable[..., Any],
    reference: Callable[..., Any] | None,
    inputs: tuple[Any, ...],
    batch_dims: Sequence[int | None] | None,
    nondiff: Iterable[int],
    once_differentiable: bool,
    rtol: float | None,
    atol: float | None,
    compile_backend: str,
    seed: int,
    memory_ratio: float | None,
) -> Subject:
    if not callable(fn):
        raise TypeError(f"verify: fn must be callable (a function or MyFunction.apply), got {type(fn).__name__}")
    if reference is not None and not callable(reference):
        raise TypeError(f"verify: reference must be callable or None, got {type(reference).__name__}")
    if not any(isinstance(x, torch.Tensor) and x.is_floating_point() for x in inputs):
        kinds = (
            ", ".join(type(x).__name__ if not isinstance(x, torch.Tensor) else f"Tensor({x.dtype})" for x in inputs)
            or "no inputs"
        )
        raise ValueError(f"verify: expected at least one floating-point tensor among the inputs, got {kinds}")
    try:
        validate_tolerances(rtol, atol)
    except ValueError as error:
        raise ValueError(f"verify: {error}") from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"verify: seed must be an int, got {type(seed).__name__}")
    if memory_ratio is not None and not (isinstance(memory_ratio, (int, float)) and memory_ratio > 0):
        raise ValueError(f"verify: memory_ratio must be a positive number or None, got {memory_ratio!r}")
    nondiff = _positions("nondiff", nondiff, allow_none=False)
    for i in nondiff:
        if not 0 <= i < len(inputs):
            raise ValueError(f"verify: nondiff position {i} is out of range for {len(inputs)} inputs")
    if batch_dims is not None:
        _check_batch_dims(_positions("batch_dims", batch_dims, allow_none=True), inputs)
    subject = Subject(
        fn,
        reference,
        inputs,
        batch_dims=batch_dims,
        nondiff=nondiff,
        once_differentiable=once_differentiable,
        rtol=rtol,
        atol=atol,
        compile_backend=compile_backend,
        seed=seed,
        memory_ratio=memory_ratio,
    )
    if not subject.differentiable:
        raise ValueError("verify: no input left to differentiate: every floating-point input is in nondiff")
    if reference is not None:
        _check_same_outputs(subject)
    return subject


def _positions(option: str, given: Any, allow_none: bool) -> list[Any]:
    """``given`` as a list of ints (or None where allowed), or a TypeError naming the option."""
    entries = "an int or None" if allow_none else "an int"
    if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__"):
        raise TypeError(f"verify: {option} must be a sequence of {entries} each, got {type(given).__name__}")
    values = list(given)
    for value in values:
        if not (value is None and allow_none) and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"verify: {option} must hold {entries} each, got {value!r}")
    return values


def _check_batch_dims(batch_dims: list[int | None], inputs: Sequence[Any]) -> None:
    if len(batch_dims) != len(inputs):
        raise ValueError(f"verify: batch_dims has {len(batch_dims)} entries for {len(inputs)} inputs")
    sizes: set[int] = set()
    for i, (dim, x) in enumerate(zip(batch_dims, inputs)):
        if dim is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"verify: batch_dims[{i}] = {dim}, but inputs[{i}] is a {type(x).__name__}")
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"verify: batch_dims[{i}] = {dim}, but inputs[{i}] is of shape {tuple(x.shape)}")
        sizes.add(x.shape[dim])
    if len(sizes) > 1:
        raise ValueError(f"verify: the batch dimensions have different sizes {sorted(sizes)}")


def _check_deterministic(subject: Subject) -> None:
    """fn computes the same outputs twice from the same inputs: every property compares runs of it."""
    with torch.no_grad():
        try:
            first, second = (as_tuple(subject.fn(*subject.inputs(requires=()))) for _ in range(2))
        except Exception:
            return  # the properties report what fn raises
    for a, b in zip(first, second):
        if isinstance(a, torch.Tensor) and not bool(((a == b) | (a.isnan() & b.isnan())).all()):
            raise ValueError(
                "verify: fn gives different outputs for the same inputs (does it draw random numbers?); "
                "verify compares runs of fn, so pass the randomness in, a dropout mask as an input"
            )


def _check_same_outputs(subject: Subject) -> None:
    """The reference must compute a function of the same shape as fn; when fn itself raises, the
    properties report that."""
    assert subject.reference is not None  # checked only where one is given
    with torch.no_grad():
        try:
            mine = as_tuple(subject.fn(*subject.inputs(requires=())))
        except Exception:
            return
        try:
            theirs = as_tuple(subject.reference(*subject.inputs(requires=())))
        except Exception as error:
            message = " ".join(str(error).split())[:200]
            raise ValueError(
                f"verify: the reference raised on float64 copies of the inputs ({type(error).__name__}: "
                f"{message}); every tensor it uses must be among the inputs"
            ) from None
    shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in mine]
    reference_shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in theirs]
    if shapes != reference_shapes:

        def show(s: list[Any]) -> str:
            return str(s[0]) if len(s) == 1 else str(s)

        raise ValueError(
            f"verify: the reference's output has shape {show(reference_shapes)} where fn's has "
            f"{show(shapes)}: the reference must compute the same function as fn"
        )


__all__ = ["VERIFY_PROPERTIES", "VerifyReport", "VerifyRow", "verify"]
