"""How a property ends, and the table of properties.

A property is a function of the :class:`~torchbp.verification.subject.Subject`
that returns what it measured (the row passes), or raises :class:`Failed`,
:class:`NotApplicable` or :class:`Skipped`. Any other exception is a failure too:
the error is what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from torchbp.verification.subject import Subject


class Failed(Exception):
    """The property was exercised and does not hold; the message says what was measured."""


class NotApplicable(Exception):
    """The property does not apply to this function; the message says why."""


class Skipped(Exception):
    """The property applies but cannot be exercised here (no GPU, left out); the message says why."""


Check: TypeAlias = "Callable[[Subject], str]"  # what it measured, or one of the exceptions above


class Property(NamedTuple):
    name: str
    check: Check
    fix: str  # the usual cause of a failure and its fix, one line


PROPERTIES: dict[str, Property] = {}


def verifies(name: str, fix: str) -> Callable[[Check], Check]:
    """Register a property under ``name``; the report lists properties in the order registered."""

    def register(check: Check) -> Check:
        PROPERTIES[name] = Property(name, check, fix)
        return check

    return register
