"""Properties of a torch.library custom op: PyTorch's own checks of its registration (torch.library.opcheck),
one row each. ``not applicable`` for anything else; the transform rows' custom-op causes live in transforms."""

from __future__ import annotations

from typing import Any

import torch

from torchbp.verification.outcome import Failed, NotApplicable, one_line, verifies
from torchbp.verification.subject import Subject, is_custom_op

# The rows that apply to custom ops alone (not applicable to anything else).
CUSTOM_OP_PROPERTIES = frozenset({"opcheck-schema", "opcheck-autograd", "opcheck-fake", "opcheck-aot"})


def _opcheck(subject: Subject, test: str) -> str:
    """One of opcheck's tests on the example inputs (float64, the differentiable ones requiring grad)."""
    if not is_custom_op(subject.fn):
        raise NotApplicable("fn is not a torch.library custom op")
    op: Any = subject.fn
    result = torch.library.opcheck(op, tuple(subject.inputs()), test_utils=(test,), raise_exception=False)[test]
    if result != "SUCCESS":
        raise Failed(one_line(result))
    return f"torch.library.opcheck's {test} passes"


@verifies(
    "opcheck-schema",
    "the op writes into an input its mutates_args does not name, or returns an input (or a view of one): "
    "declare the mutation, or return a new tensor",
)
def opcheck_schema(subject: Subject) -> str:
    """The op's schema tells the truth: what it mutates, what it aliases (opcheck's test_schema)."""
    return _opcheck(subject, "test_schema")


@verifies(
    "opcheck-autograd",
    "the op's autograd is inside its backend kernel (an autograd.Function called from its CPU or CUDA "
    "implementation), where torch.compile's dispatcher does not see it, or missing: register it with "
    "op.register_autograd(backward, setup_context=...)",
)
def opcheck_autograd(subject: Subject) -> str:
    """The op's autograd is registered where PyTorch looks for it (opcheck's test_autograd_registration)."""
    return _opcheck(subject, "test_autograd_registration")


@verifies(
    "opcheck-fake",
    "no fake kernel (op.register_fake), or one whose output's shape, dtype or strides are not the real "
    "kernel's: torch.compile and export trace with it",
)
def opcheck_fake(subject: Subject) -> str:
    """The fake kernel gives the real kernel's output metadata (opcheck's test_faketensor)."""
    return _opcheck(subject, "test_faketensor")


@verifies(
    "opcheck-aot",
    "the op fails AOT dispatch with dynamic shapes: a fake kernel that reads sizes as Python ints, or a "
    "backward that calls what the tracer cannot follow",
)
def opcheck_aot(subject: Subject) -> str:
    """The op traces through AOT dispatch with dynamic shapes, forward and backward (test_aot_dispatch_dynamic)."""
    return _opcheck(subject, "test_aot_dispatch_dynamic")
