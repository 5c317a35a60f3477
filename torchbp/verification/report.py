"""What :func:`torchbp.verify` returns: one row per property, and a table to read."""

from __future__ import annotations

from typing import NamedTuple

PASS, FAIL, NOT_APPLICABLE, SKIPPED = "pass", "fail", "not applicable", "skipped"


class VerifyRow(NamedTuple):
    """One property: its name, its status, what was measured, and for a failure the usual cause and fix."""

    name: str
    status: str  # "pass", "fail", "not applicable" or "skipped"
    measured: str  # the largest error against its tolerance, the error raised, or the reason
    fix: str = ""  # only for a failure
    seconds: float = 0.0  # how long the property took

    @property
    def ok(self) -> bool:
        return self.status != FAIL


class VerifyReport:
    """The properties :func:`torchbp.verify` checked, one :class:`VerifyRow` each.

    ``report.ok`` (and ``bool(report)``) is true when no property failed;
    ``str(report)`` is the table; :meth:`assert_ok` raises AssertionError
    carrying the table, so a failing test shows which property broke and why.
    """

    def __init__(self, title: str, rows: list[VerifyRow], inputs: str = ""):
        self.title = title
        self.rows = rows
        self.inputs = inputs  # how the inputs were taken: which are differentiated, where the batch is

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    def __getitem__(self, name: str) -> VerifyRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"{name!r}: this report has {', '.join(row.name for row in self.rows)}")

    @property
    def failures(self) -> list[VerifyRow]:
        return [row for row in self.rows if row.status == FAIL]

    def statuses(self) -> dict[str, str]:
        """{property: status}, in the report's order."""
        return {row.name: row.status for row in self.rows}

    def assert_ok(self) -> None:
        """Raise AssertionError carrying the whole table when any property failed."""
        if not self.ok:
            raise AssertionError(str(self))

    def __repr__(self) -> str:
        return f"VerifyReport(title={self.title!r}, rows={self.rows!r})"

    def __str__(self) -> str:
        failures = self.failures
        counts = ", ".join(
            f"{sum(row.status == status for row in self.rows)} {status}"
            for status in (PASS, FAIL, NOT_APPLICABLE, SKIPPED)
            if any(row.status == status for row in self.rows)
        )
        if failures:
            headline = f"{self.title}: FAIL in {', '.join(row.name for row in failures)} ({counts})"
        else:
            headline = f"{self.title}: OK ({counts})"
        width = max([len("property"), *(len(row.name) for row in self.rows)])
        status_width = max(len(status) for status in (PASS, FAIL, NOT_APPLICABLE, SKIPPED))
        lines = [headline] + ([self.inputs] if self.inputs else [])
        lines.append(f"{'property'.ljust(width)}  {'status'.ljust(status_width)}  measured")
        for row in self.rows:
            lines.append(f"{row.name.ljust(width)}  {row.status.ljust(status_width)}  {row.measured}")
            if row.fix:
                lines.append(f"{''.ljust(width)}  {''.ljust(status_width)}  ↳ {row.fix}")
        return "\n".join(lines)
