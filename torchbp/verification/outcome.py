"""How a property ends, and the table of properties.

A property is a function of the :class:`~torchbp.verification.subject.Subject`
that returns what it measured (the row passes), or raises :class:`Failed`,
:class:`NotApplicable` or :class:`Skipped`. Any other exception is a failure too:
the error is what was measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar


class Failed(Exception):
    """The property was exercised and does not hold; the message says what was measured. ``fix``, where the
    cause is known, replaces the property's usual cause and fix."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.fix = fix


class NotApplicable(Exception):
    """The property does not apply to this function; the message says why."""


class Skipped(Exception):
    """The property applies but cannot be exercised here (no GPU, left out); the message says why."""


# A property: a function of the Subject (not named here, which would make the two modules import each other)
# returning what it measured, or raising one of the exceptions above.
Check = TypeVar("Check", bound=Callable[[Any], str])


class Property(NamedTuple):
    name: str
    check: Callable[[Any], str]
    fix: str  # the usual cause of a failure and its fix, one line


PROPERTIES: dict[str, Property] = {}


def verifies(name: str, fix: str) -> Callable[[Check], Check]:
    """Register a property under ``name``; the report lists properties in the order registered."""

    def register(check: Check) -> Check:
        PROPERTIES[name] = Property(name, check, fix)
        return check

    return register


def one_line(error: object, limit: int = 300) -> str:
    """An error's message (or any report's text) on one line, cut at ``limit`` characters."""
    message = " ".join(str(error).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


# Errors whose words name their cause, whichever property raised them: the fix for it.
ERROR_CAUSES = (
    (
        "no autograd formula was registered",
        "the custom op has no autograd formula: register one with op.register_autograd(backward, setup_context=...)",
    ),
)


# PyTorch's words when a backward returns a gradient of another shape than its input's.
WRONG_SHAPE = re.compile(
    r"returned an invalid gradient at index (\d+) - got (\[[^\]]*\]) but expected shape compatible with (\[[^\]]*\])"
)


# PyTorch's words for a dimension that is not there: under vmap, fn sees each sample without its batch dimension.
MISSING_DIMENSION = re.compile(r"Dimension out of range|Expected \d+-dimensional input|expected \d+D")
PER_SAMPLE_ROWS = ("vmap", "vmap-grad")


def fix_for(message: str, prop: Property) -> str:
    """The fix for what an error raised under ``prop`` says, where its words name the cause; else the property's
    usual one."""
    fix = next((fix for words, fix in ERROR_CAUSES if words in message), None)
    if fix is not None:
        return fix
    if prop.name in PER_SAMPLE_ROWS and MISSING_DIMENSION.search(message):
        return (
            "fn (its forward or backward) counts dimensions from the front, or needs the batch dimension: vmap "
            "gives it one sample, that dimension removed. Count from the end (dim=-1, x[..., i], reshape(*lead, "
            "-1)) so that one sample and a batch both work; a Function that must see the batch cannot be vmapped "
            "(skip=('vmap', 'vmap-grad') where torch.func is not used on it)"
        )
    wrong_shape = WRONG_SHAPE.search(message)
    if wrong_shape is None:
        return prop.fix
    index, got, expected = wrong_shape.groups()
    fix = f"the backward returns gradient {index} (counted from 0, as forward's inputs) in shape {got} "
    fix += f"where its input's is {expected}"
    if prop.name == "empty-batch":
        fix += ": with no samples, a sum over the batch done as one product or convolution over it can come out "
        fix += "in another shape; start from zeros of the input's shape"
    return fix
