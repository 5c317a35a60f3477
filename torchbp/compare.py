"""Check any function or model against native autograd, and explain a mismatch.

A tensor matches its reference when

    max |actual − reference| ≤ atol + rtol · max |reference|

The relative tolerance is scaled by the reference's own largest magnitude, so
it shrinks with the gradients: a fixed absolute floor such as
torch.testing's atol = 1e-5 would let a 50 % wrong gradient pass wherever
gradients are around 1e-6, as they are for a mean-reduced loss over many
elements. By default ``atol`` is 0 and ``rtol`` depends on the reference's
dtype (``DEFAULT_RTOL``). NaN and ±Inf must sit at the same places on both
sides; they are excluded from the error figures. Complex tensors are compared
as their real and imaginary parts, integer and boolean tensors exactly.

Two limits of a tolerance scaled by the reference's largest magnitude:

- where the reference is exactly zero everywhere, only exact zeros match;
  pass ``atol`` for an absolute floor;
- a gradient that is the small difference of large terms (heavy cancellation)
  can differ between two correct implementations that add in different orders
  by more than rtol times its own size; pass a larger ``rtol`` there. Most
  torchbp Functions add in native torch's order, so on CPU they agree with it
  to the bit in float32 and float64; where they cannot, the README's table of
  layers says so.

:mod:`torchbp.check` runs a function or a model on both sides and compares
them through this module.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeAlias, cast

import torch

DEFAULT_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-7,
    torch.float32: 1e-5,
    torch.float16: 2e-3,  # a few units of its 2⁻¹⁰ rounding step
    torch.bfloat16: 2e-2,  # a few units of its 2⁻⁷ rounding step
    torch.complex128: 1e-7,  # as its real and imaginary parts' dtype
    torch.complex64: 1e-5,
}


class ComparedTensor(NamedTuple):
    """One row of a report: a tensor and its reference."""

    name: str
    shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    max_abs_error: float
    max_rel_error: float  # max_abs_error / max |reference|
    tolerance: float  # atol + rtol · max |reference|
    reference_max: float  # max |reference| over its finite elements
    ok: bool
    note: str = ""

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "MISMATCH"
        return "exact" if self.max_abs_error == 0 else "close"

    @property
    def share_of_tolerance(self) -> float:
        """max_abs_error / tolerance (see :func:`share_of_tolerance`); NaN where no error could be measured,
        and infinite for a row that fails for another reason than its size (NaN or ±Inf in other places,
        another shape or dtype), so that a failing row is never read as within its limit."""
        share = share_of_tolerance(self.max_abs_error, self.tolerance)
        return math.inf if not self.ok and share <= 1 else share


class Settled(NamedTuple):
    """A pair decided in the common case (finite, within tolerance): its row, built only when read."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    max_abs_error: float
    reference_max: float
    rtol: float | None
    atol: float | None
    ok: bool = True

    @property
    def max_rel_error(self) -> float:
        return relative_error(self.max_abs_error, self.reference_max)

    @property
    def share_of_tolerance(self) -> float:
        return share_of_tolerance(self.max_abs_error, tolerance(self.dtype, self.reference_max, self.rtol, self.atol))

    def row(self) -> ComparedTensor:
        return _row(
            self.name, tuple(self.shape), self.dtype, self.max_abs_error, self.reference_max, self.rtol, self.atol
        )


class Identical(NamedTuple):
    """A pair whose bits are equal, left unmeasured: exact, with max |reference| read when the row is built.

    The reference is held weakly (a scalar outright), so a kept report does not keep a model's
    gradients alive; if it has been freed or changed in place (its version
    counter moved) by then, the row says so rather than show another tensor's figure.
    """

    name: str
    shape: torch.Size
    dtype: torch.dtype
    reference: Callable[[], torch.Tensor | None]  # a weak reference, or for a scalar a strong one
    version: int
    rtol: float | None
    atol: float | None
    ok: bool = True
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    share_of_tolerance: float = 0.0

    def row(self) -> ComparedTensor:
        reference = self.reference()
        if reference is not None and reference._version == self.version:
            return compare_tensors(self.name, reference, reference, self.rtol, self.atol)
        return ComparedTensor(
            self.name,
            tuple(self.shape),
            self.dtype,
            0.0,
            0.0,
            math.nan,
            math.nan,
            True,
            "equal bits; max |ref| unknown: the tensor was freed or changed before this row was read",
        )


class Report:
    """The outcome of a comparison: one row per compared tensor.

    ``bool(report)`` is ``report.ok``, so ``assert check_model(...)`` means what it says.
    Rows decided in the common case are built when ``rows`` is first read: a
    lockstep step that matches pays for its verdict, not for its table.
    """

    def __init__(self, title: str, rows: Iterable[ComparedTensor | Settled | Identical] = (), layers: str = ""):
        self.title = title
        self._entries: list[ComparedTensor | Settled | Identical] = list(rows)
        self.layers = layers  # what was compared: which layers are hand-derived, which native (see describe_layers)

    @property
    def rows(self) -> list[ComparedTensor]:
        if any(type(entry) is not ComparedTensor for entry in self._entries):
            self._entries = [entry if isinstance(entry, ComparedTensor) else entry.row() for entry in self._entries]
        return cast(list[ComparedTensor], self._entries)  # every entry is a row now

    def append(self, row: ComparedTensor) -> None:
        self._entries.append(row)

    @property
    def ok(self) -> bool:
        return all(entry.ok for entry in self._entries)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"Report(title={self.title!r}, rows={self.rows!r})"

    @property
    def max_abs_error(self) -> float:
        return max((entry.max_abs_error for entry in self._entries), default=0.0)

    def max_rel_error(self, suffix: str = "") -> float:
        """The largest max_rel_error over the rows whose names end with ``suffix``."""
        return max((entry.max_rel_error for entry in self._entries if entry.name.endswith(suffix)), default=0.0)

    def max_share_of_tolerance(self) -> float:
        """The largest error as a fraction of its tolerance over the rows: 0 where every tensor is equal
        bit for bit, at most 1 where the comparison passes, above 1 (or NaN, where a row could not be
        measured) where it fails. One figure for a whole step, on a scale that does not depend on the
        gradients' sizes or dtypes."""
        shares = [entry.share_of_tolerance for entry in self._entries]
        return float("nan") if any(share != share for share in shares) else max(shares, default=0.0)

    @property
    def mismatches(self) -> list[ComparedTensor]:
        return [row for row in self.rows if not row.ok]

    def assert_ok(self) -> None:
        """Raise AssertionError carrying the whole table when any tensor mismatches."""
        if not self.ok:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        bad = self.mismatches
        if bad:
            headline = f"{self.title}: MISMATCH in {len(bad)} of {len(self.rows)} tensors: " + ", ".join(
                row.name for row in bad
            )
        else:
            headline = f"{self.title}: MATCH, {len(self.rows)} of {len(self.rows)} tensors within tolerance"
        header = ("tensor", "shape", "dtype", "max abs err", "max rel err", "tolerance", "max |ref|", "result")
        body = [
            (
                row.name,
                "?" if row.shape is None else str(row.shape),
                "?" if row.dtype is None else str(row.dtype).removeprefix("torch."),
                f"{row.max_abs_error:.2e}",
                f"{row.max_rel_error:.2e}",
                f"{row.tolerance:.2e}",
                f"{row.reference_max:.2e}",
                row.verdict,
            )
            for row in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        lines = [headline] + ([self.layers] if self.layers else [])
        lines += [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]
        ]
        lines += [f"  {row.name}: {row.note}" for row in self.rows if row.note]
        return "\n".join(lines)


def compare_tensors(
    name: str,
    actual: torch.Tensor | None,
    reference: torch.Tensor | None,
    rtol: float | None = None,
    atol: float | None = None,
) -> ComparedTensor:
    """Compare one tensor with its reference; see the module docstring for the criterion.

    This is the detailed analysis: non-finite values, metadata, the index of the
    largest error. :func:`compare_many` decides the common case faster and calls
    this for everything else.
    """
    validate_tolerances(rtol, atol)
    if actual is None or reference is None:
        present = reference if actual is None else actual
        if present is None:
            return ComparedTensor(name, None, None, 0.0, 0.0, 0.0, 0.0, True, "absent on both sides")
        side = "torchbp side" if actual is None else "reference side"
        return ComparedTensor(
            name,
            tuple(present.shape),
            present.dtype,
            float("inf"),
            float("inf"),
            0.0,
            0.0,
            False,
            f"missing on the {side}",
        )
    if not (isinstance(actual, torch.Tensor) and isinstance(reference, torch.Tensor)):
        return _compare_other_values(name, actual, reference)
    shape, dtype = tuple(reference.shape), reference.dtype
    mismatch = None
    if tuple(actual.shape) != shape:
        mismatch = f"shape {tuple(actual.shape)} where the reference has {shape}"
    elif actual.dtype != dtype:
        mismatch = f"dtype {actual.dtype} where the reference has {dtype}"
    elif actual.device != reference.device:
        mismatch = f"device {actual.device} where the reference has {reference.device}"
    if mismatch is not None:
        return ComparedTensor(name, shape, dtype, float("inf"), float("inf"), 0.0, 0.0, False, mismatch)
    if not (dtype.is_floating_point or dtype.is_complex):
        return _compare_exactly(name, actual.detach(), reference.detach())
    a, b = _as_float64(actual), _as_float64(reference)
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    nonfinite_agree = bool(torch.equal(finite_a, finite_b)) and bool(
        torch.all(finite_b | (a == b) | (torch.isnan(a) & torch.isnan(b)))
    )
    finite = finite_a & finite_b
    error = (a - b).abs()[finite]
    max_abs = error.max().item() if error.numel() else 0.0
    reference_max = b.abs()[finite].max().item() if error.numel() else 0.0
    row = _row(name, shape, dtype, max_abs, reference_max, rtol, atol)
    if not nonfinite_agree:
        note = "NaN or Inf at places where the reference has none, or the other way round"
        return row._replace(ok=False, note=note)
    if not row.ok:
        return row._replace(note=_where(error, finite, max_abs))
    return row


def compare_many(
    pairs: Sequence[tuple[str, torch.Tensor | None, torch.Tensor | None]],
    rtol: float | None = None,
    atol: float | None = None,
) -> list[ComparedTensor]:
    """``[compare_tensors(name, actual, reference, rtol, atol) for name, actual, reference in pairs]``, faster.

    The common case (same shape, dtype and device, every value finite) needs only
    each pair's max |actual − reference| and max |reference|, worked out for all
    such pairs together (see :func:`_common_case_figures`). Any pair outside it,
    or outside its tolerance, gets the detailed analysis of :func:`compare_tensors`,
    so the rows are those of the loop in every case.
    """
    return Report("", settle(pairs, rtol, atol)).rows


# (name, actual, reference): tensors or None, or whatever else a checked function returned
Pair: TypeAlias = tuple[str, Any, Any]


def settle(
    pairs: Sequence[Pair],
    rtol: float | None = None,
    atol: float | None = None,
    defer_equal: bool = False,
) -> list[ComparedTensor | Settled | Identical]:
    """What :func:`compare_many` returns, with the rows of the common case not yet built.

    With ``defer_equal``, a pair with equal bits on the CPU is not even measured:
    its verdict (exact) needs no figure, and max |reference| is read from the
    reference tensor when the row is built (see :class:`Identical`).
    """
    validate_tolerances(rtol, atol)
    entries: list[ComparedTensor | Settled | Identical] = []
    for (name, actual, reference), figures in zip(pairs, _common_case_figures(pairs, defer_equal)):
        if isinstance(figures, EqualBits):
            # A scalar (the loss) is held outright: it costs nothing and is often freed before its row is read.
            held = (lambda tensor=reference: tensor) if reference.dim() == 0 else weakref.ref(reference)
            entries.append(Identical(name, reference.shape, reference.dtype, held, reference._version, rtol, atol))
            continue
        if figures is not None:
            error, largest = figures
            within = error <= tolerance(reference.dtype, largest, rtol, atol)
            if within and math.isfinite(error) and math.isfinite(largest):  # then every element was finite
                entries.append(Settled(name, reference.shape, reference.dtype, error, largest, rtol, atol))
                continue
        entries.append(compare_tensors(name, actual, reference, rtol, atol))
    return entries


READING_A_BOOLEAN_IS_FREE = {"cpu"}  # device types where torch.equal does not wait on a queue of work


class EqualBits:
    """The figure of a pair left unmeasured because its bits are equal: exact."""


EQUAL_BITS = EqualBits()
Figures: TypeAlias = "tuple[float, float] | EqualBits | None"  # (max |actual − reference|, max |reference|)


def _common_case_figures(pairs: Sequence[Pair], defer_equal: bool = False) -> list[Figures]:
    """(max |actual − reference|, max |reference|) for each pair of the common case, None for the others.

    Equal bits need no arithmetic: on the CPU, where reading a boolean costs
    nothing (``READING_A_BOOLEAN_IS_FREE``), torch.equal finds them (and with
    ``defer_equal`` their figures are left as ``EQUAL_BITS``); elsewhere a
    difference of zero, computed in the tensors' own dtype on their device,
    does. Only where the bits differ is the difference computed in float64,
    the precision every error is reported in. A maximum of magnitudes is exact
    in any dtype. The figures of each device and dtype are read back in one
    synchronisation (two where some bits differ). A figure that is not finite
    means a NaN or an infinity.
    """
    figures: list[Figures] = [None] * len(pairs)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (_, actual, reference) in enumerate(pairs):
        if _summarisable(actual, reference):
            groups.setdefault((reference.device, reference.dtype), []).append(i)
    for (device, dtype), indices in groups.items():
        actual, reference = [pairs[i][1] for i in indices], [pairs[i][2] for i in indices]
        if dtype.is_complex:
            actual, reference = [torch.view_as_real(t) for t in actual], [torch.view_as_real(t) for t in reference]
        if device.type in READING_A_BOOLEAN_IS_FREE:
            measured = _figures_where_bits_are_equal_on_sight(actual, reference, defer_equal)
        else:
            measured = _figures_in_one_pass(actual, reference, exact=dtype in (torch.float64, torch.complex128))
        for i, figure in zip(indices, measured):
            figures[i] = figure
    return figures


def _figures_where_bits_are_equal_on_sight(
    actual: list[torch.Tensor], reference: list[torch.Tensor], defer_equal: bool
) -> list[Figures]:
    """torch.equal first; the magnitudes of every pair (or, deferring, of the unequal ones) and the
    float64 errors of the unequal ones after."""
    equal = [torch.equal(a, b) for a, b in zip(actual, reference)]
    if defer_equal and all(equal):  # the common case of the common case: nothing to measure
        return [EQUAL_BITS] * len(equal)
    measure = [k for k, same in enumerate(equal) if not (same and defer_equal)]
    largest = dict(zip(measure, _maxima(_magnitudes([reference[k] for k in measure])))) if measure else {}
    unequal = [k for k, same in enumerate(equal) if not same]
    errors = dict.fromkeys(range(len(equal)), 0.0)
    if unequal:
        errors.update(zip(unequal, _float64_errors([actual[k] for k in unequal], [reference[k] for k in unequal])))
    return [EQUAL_BITS if k not in largest else (errors[k], largest[k]) for k in range(len(equal))]


def _figures_in_one_pass(actual: list[torch.Tensor], reference: list[torch.Tensor], exact: bool) -> list[Figures]:
    """Differences and magnitudes in the tensors' own dtype, read back together; the nonzero differences
    again in float64 unless the dtype is float64 already (``exact``)."""
    maxima = _maxima(_absolute_differences(actual, reference) + _magnitudes(reference))
    errors, largest = maxima[: len(actual)], maxima[len(actual) :]
    unequal = [k for k, error in enumerate(errors) if error != 0]
    if unequal and not exact:
        for k, error in zip(unequal, _float64_errors([actual[k] for k in unequal], [reference[k] for k in unequal])):
            errors[k] = error
    return list(zip(errors, largest))


def _float64_errors(actual: list[torch.Tensor], reference: list[torch.Tensor]) -> list[float]:
    return _maxima(_absolute_differences([a.double() for a in actual], [b.double() for b in reference]))


@torch.no_grad()  # parameters are compared as values, not recorded
def _absolute_differences(actual: list[torch.Tensor], reference: list[torch.Tensor]) -> list[torch.Tensor]:
    differences = torch._foreach_sub(actual, reference)
    torch._foreach_abs_(differences)
    return list(differences)


@torch.no_grad()
def _magnitudes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch._foreach_abs(tensors))


def _maxima(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's largest element, read back in one synchronisation."""
    return torch.stack(_foreach_max(tensors)).tolist()


def _foreach_max(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...] | list[torch.Tensor]:
    """Each tensor's largest element (one call where this PyTorch has torch._foreach_max)."""
    if hasattr(torch, "_foreach_max"):
        return torch._foreach_max(tensors)
    return [t.amax() for t in tensors]


def validate_tolerances(rtol: float | None, atol: float | None) -> None:
    """A tolerance is a finite number ≥ 0, or None for the default."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number of at least 0 (or None for the default), got {value!r}")


def _summarisable(actual: object, reference: object) -> bool:
    """Can this pair take compare_many's common case?"""
    return (
        isinstance(actual, torch.Tensor)
        and isinstance(reference, torch.Tensor)
        and actual.shape == reference.shape
        and actual.dtype == reference.dtype
        and actual.device == reference.device
        and reference.dtype in DEFAULT_RTOL  # the dtypes whose arithmetic it needs (float8 has none)
        and not (actual.is_conj() or reference.is_conj())
        and reference.numel() > 0
    )


def _real(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as its real and imaginary parts; a real one as it is."""
    t = t.detach()
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def _as_float64(t: torch.Tensor) -> torch.Tensor:
    """Real values in float64, the precision every error is computed in."""
    return _real(t).to(torch.float64)


def tolerance(dtype: torch.dtype, reference_max: float, rtol: float | None, atol: float | None) -> float:
    """atol + rtol · max |reference|, with the dtype's default rtol and atol 0 where not given: the criterion."""
    rtol = DEFAULT_RTOL.get(dtype, 0.0) if rtol is None else rtol
    return (0.0 if atol is None else atol) + rtol * reference_max


def share_of_tolerance(max_abs: float, allowed: float) -> float:
    """max |actual − reference| / tolerance: 0 for equal tensors (whatever the tolerance), 1 at the limit of
    the check, infinite for an error where nothing is allowed (a reference of zeros and no atol), NaN where
    an error is unknown."""
    if max_abs == 0:
        return 0.0
    if max_abs != max_abs or allowed != allowed:
        return math.nan
    return max_abs / allowed if allowed > 0 else math.inf


def relative_error(max_abs: float, reference_max: float) -> float:
    """max |actual − reference| / max |reference|; 0 for two zeros, infinite for an error against zeros."""
    if reference_max > 0:
        return max_abs / reference_max
    return 0.0 if max_abs == 0 else math.inf


def _row(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    max_abs: float,
    reference_max: float,
    rtol: float | None,
    atol: float | None,
) -> ComparedTensor:
    """The verdict on finite figures."""
    allowed = tolerance(dtype, reference_max, rtol, atol)
    return ComparedTensor(
        name, shape, dtype, max_abs, relative_error(max_abs, reference_max), allowed, reference_max, max_abs <= allowed
    )


def _compare_exactly(name: str, actual: torch.Tensor, reference: torch.Tensor) -> ComparedTensor:
    """Integers and booleans: equal or not, with no rounding through float64."""
    shape, dtype = tuple(reference.shape), reference.dtype
    ok = bool(torch.equal(actual, reference))
    max_abs = 0.0 if ok else float((actual.long() - reference.long()).abs().max().item())
    reference_max = float(reference.long().abs().max().item()) if reference.numel() else 0.0
    max_rel = relative_error(max_abs, reference_max)
    return ComparedTensor(name, shape, dtype, max_abs, max_rel, 0.0, reference_max, ok, "" if ok else "not equal")


def _compare_other_values(name: str, actual: object, reference: object) -> ComparedTensor:
    """An output that is not a tensor on one side or both (a count, a flag): equal when of one type and ==."""
    try:
        equal = type(actual) is type(reference) and bool(actual == reference)
    except Exception:  # an == that gives no single truth value (an array's, say): not equal as far as we can tell
        equal = False
    note = f"not a tensor ({type(actual).__name__} here, {type(reference).__name__} in the reference), compared with =="
    error = 0.0 if equal else math.inf
    return ComparedTensor(name, None, None, error, error, 0.0, 0.0, equal, note)


def _where(error: torch.Tensor, finite: torch.Tensor, max_abs: float) -> str:
    """Index of the largest error, to point a reader at it."""
    flat_index = torch.nonzero(finite.reshape(-1)).reshape(-1)[error.argmax()].item()
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), finite.shape))
    return f"largest error {max_abs:.3e} at index {index}"
