"""How a property ends, and the table of properties.

A property is a function of the :class:`~torchbp.verification.subject.Subject`
that returns what it measured (the row passes), or raises :class:`Failed`,
:class:`NotApplicable` or :class:`Skipped`. Any other exception is a failure too:
the error is what was measured.
"""

from __future__ import annotations

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
