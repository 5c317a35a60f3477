"""Properties of the gradients themselves: against the reference, against finite differences,
differentiated twice, and for every subset of inputs that may ask for them."""

from __future__ import annotations

from typing import Any, TypedDict, cast

import torch
from torch.autograd.gradcheck import GradcheckError

from torchbp.check import as_tuple
from torchbp.verification.outcome import Failed, NotApplicable, verifies
from torchbp.verification.subject import Subject, custom_nodes

NO_REFERENCE = "no reference given; gradcheck checks the gradients against finite differences"


def _against_reference(subject: Subject, dtype: torch.dtype) -> str:
    if subject.reference is None:
        raise NotApplicable(NO_REFERENCE)
    return subject.compare(subject.pairs(*subject.run_both(dtype)))


@verifies(
    "float64",
    "the backward's formula: compare it term by term with the derivation (a transpose, a missing sum, a factor)",
)
def float64(subject: Subject) -> str:
    """Outputs and gradients equal the reference's in float64, for a random upstream gradient."""
    return _against_reference(subject, torch.float64)


@verifies(
    "float32",
    "a formula that holds only in float64, or a sum of large terms that cancel: reorder it as the reference does",
)
def float32(subject: Subject) -> str:
    """Outputs and gradients equal the reference's in float32."""
    return _against_reference(subject, torch.float32)


class GradcheckOptions(TypedDict):
    """gradcheck's and gradgradcheck's step and tolerances, passed as keyword arguments."""

    eps: float
    atol: float
    rtol: float


GRADCHECK: GradcheckOptions = dict(eps=1e-6, atol=1e-5, rtol=1e-3)
FAST_MODE_FROM = 500  # differentiable elements; slow mode builds whole Jacobians, its cost grows with their square


def _large(subject: Subject, inputs: list[Any]) -> bool:
    """Large enough for gradcheck's fast mode (a random projection of the Jacobian instead of all of it)."""
    elements: int = sum(inputs[i].numel() for i in subject.differentiable)
    return elements > FAST_MODE_FROM


@verifies(
    "gradcheck",
    "the backward's formula, or a forward that is not smooth at the example inputs",
)
def check_gradcheck(subject: Subject) -> str:
    """Gradients agree with finite differences in float64 (torch.autograd.gradcheck); needs no reference."""
    inputs = subject.inputs()
    fast = _large(subject, inputs)
    try:
        torch.autograd.gradcheck(subject.fn, inputs, **GRADCHECK, fast_mode=fast)
    except GradcheckError as error:
        raise Failed(f"{_first_line(error)} (finite differences against the backward)") from None
    return (
        f"agrees with finite differences (eps {GRADCHECK['eps']:.0e}, atol {GRADCHECK['atol']:.0e}, "
        f"rtol {GRADCHECK['rtol']:.0e}{', fast mode' if fast else ''})"
    )


@verifies(
    "double-backward",
    "the backward leaves autograd (.detach(), .numpy(), .item(), torch.no_grad), or reads an intermediate "
    "computed in setup_context: keep it in differentiable torch operations on saved inputs and outputs, or mark "
    "it @once_differentiable and pass once_differentiable=True",
)
def double_backward(subject: Subject) -> str:
    """The backward is itself differentiable, correctly (torch.autograd.gradgradcheck)."""
    if subject.once_differentiable:
        raise NotApplicable("declared once-differentiable (once_differentiable=True)")
    try:
        marked = _marked_once_differentiable(subject)
    except RuntimeError as error:
        raise _written_upstream(error) from None
    if marked:
        raise NotApplicable("the backward is marked @once_differentiable")
    inputs = subject.inputs()
    try:
        torch.autograd.gradgradcheck(subject.fn, inputs, **GRADCHECK, fast_mode=_large(subject, inputs))
    except GradcheckError as error:
        measured = f"{_first_line(error)} (finite differences of the backward against its own backward)"
        if not _second_derivatives_finite(subject):
            raise Failed(
                f"{measured}; the second derivatives are NaN or infinite at the example inputs",
                fix="a singular point of the backward's formula (a sqrt, log or division at 0) among the example "
                "inputs: give inputs away from it, or mark the backward @once_differentiable",
            ) from None
        raise Failed(measured) from None
    except RuntimeError as error:
        raise _written_upstream(error) from None
    return "second derivatives agree with finite differences of the backward" + (
        " (fast mode)" if _large(subject, inputs) else ""
    )


def _written_upstream(error: RuntimeError) -> Exception:
    """The failure to report for an error raised while differentiating the backward: a diagnosis where the
    backward wrote into its upstream gradient, else the error itself."""
    if "leaf Variable that requires grad is being used in an in-place operation" not in str(error):
        return error
    return Failed(
        f"raised RuntimeError: {_first_line(error)}",
        fix="the backward writes into its upstream gradient g (g.mul_(...), g += ...), which is a leaf of the "
        "graph when the backward is differentiated: return a new tensor (g * ...) instead",
    )


def _summed_gradients(subject: Subject) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Fresh differentiable inputs, and the sum of fn's gradients of them for the seeded upstream gradient,
    their graph kept, as double backward differentiates them (the upstream gradient requires grad: only
    then does @once_differentiable act); None where no gradient is itself differentiable."""
    inputs = subject.inputs()
    outputs = as_tuple(subject.fn(*inputs))
    pairs = [
        (out, g.requires_grad_())
        for out, g in zip(outputs, subject.upstream(outputs))
        if g is not None and out.requires_grad
    ]
    wrt = [inputs[i] for i in subject.differentiable]
    grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], create_graph=True, allow_unused=True)
    differentiable = [g.sum() for g in grads if g is not None and g.requires_grad]
    return wrt, cast(torch.Tensor, sum(differentiable)) if differentiable else None


def _second_derivatives_finite(subject: Subject) -> bool:
    """Are the derivatives of fn's gradients (summed) finite at the example inputs?"""
    wrt, total = _summed_gradients(subject)
    if total is None:
        return True
    second = torch.autograd.grad(total, wrt, allow_unused=True)
    return all(g is None or bool(g.isfinite().all()) for g in second)


def _marked_once_differentiable(subject: Subject) -> bool:
    """Does differentiating fn's gradients raise the error @once_differentiable plants?"""
    _, total = _summed_gradients(subject)
    if total is None:
        return False
    try:
        total.backward()  # type: ignore[no-untyped-call]  # into fresh leaves' .grad; the mark's error shows only here
    except RuntimeError as error:
        return "once_differentiable" in str(error)
    return False


@verifies(
    "needs-input-grad",
    "a backward that ignores ctx.needs_input_grad, or reads a saved tensor that setup_context left out",
)
def needs_input_grad(subject: Subject) -> str:
    """For every subset of inputs requiring grad: the same gradients, and none computed for the others."""
    subsets = subject.subsets()
    others = [i for i in subject.tensors if i not in subject.differentiable]
    if len(subsets) == 1 and not others:
        raise NotApplicable("one tensor input: there is no gradient to leave out")
    baseline = dict(zip(subject.differentiable, subject.baseline.grads))
    nodes_seen = 0
    extra: list[str] = []
    pairs: list[tuple[str, Any, Any]] = []
    for subset in subsets:
        inputs = subject.inputs(requires=subset)
        outputs = as_tuple(subject.fn(*inputs))
        nodes = custom_nodes(outputs)
        nodes_seen += len(nodes)
        for node in nodes:
            node.register_hook(
                lambda returned, _, node=node, subset=subset: extra.extend(
                    f"{type(node).__name__} returned a gradient for {_argument(subject, node, k)}, which needs none "
                    f"(inputs {list(subset)} require grad)"
                    for k, ((edge, _), grad) in enumerate(zip(node.next_functions, returned))
                    if edge is None and grad is not None
                )
            )
        grads = subject.gradients(outputs, inputs, wrt=subset)
        pairs += [(f"inputs[{i}].grad with only {list(subset)}", g, baseline[i]) for i, g in zip(subset, grads)]
    if extra:
        raise Failed(extra[0] + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    measured = subject.compare(pairs)
    nodes_note = "" if nodes_seen else "; fn records no autograd.Function node, so only the gradients are checked"
    return f"{len(subsets)} subset{'s' if len(subsets) > 1 else ''}: {measured}{nodes_note}"


def _argument(subject: Subject, node: torch.autograd.function.BackwardCFunction, k: int) -> str:
    """The k-th tensor argument of ``node``'s Function, as verify numbers inputs where fn is that Function."""
    if len(node.next_functions) == len(subject.tensors):  # fn hands its tensors to the Function as they come
        return f"inputs[{subject.tensors[k]}]"
    return f"its tensor argument {k}"


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].rstrip(",") if lines else type(error).__name__
