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
  by more than rtol times its own size; pass a larger ``rtol`` there. The
  torchbp Functions add in native torch's order, so on CPU they agree with it
  to the bit in float32 and float64.

Both sides of a comparison draw the same random numbers (see
:class:`SameRandomness`), so a model with dropout compares like one without.
"""

from __future__ import annotations

import copy
import math
import weakref
from typing import Callable, Iterable, NamedTuple, Sequence

import torch

from torchbp.convert import convert, to_native
from torchbp.nn import HAND_DERIVED

DEFAULT_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-7,
    torch.float32: 1e-5,
    torch.float16: 2e-3,  # a few units of its 2⁻¹⁰ rounding step
    torch.bfloat16: 2e-2,  # a few units of its 2⁻⁷ rounding step
    torch.complex128: 1e-7,  # as its real and imaginary parts' dtype
    torch.complex64: 1e-5,
}


class SameRandomness:
    """Lets a second run draw the random numbers a first run drew.

    Create it before the first run and call :meth:`replay` before the second:
    the global CPU generator (and CUDA's, where it is in use) starts again from
    where the first run started, so dropout masks and the like agree.
    """

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


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
        return self.max_abs_error / self.reference_max if self.reference_max > 0 else (0.0 if self.max_abs_error == 0 else math.inf)

    def row(self) -> ComparedTensor:
        return _row(self.name, tuple(self.shape), self.dtype, self.max_abs_error, self.reference_max, self.rtol, self.atol)


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

    def row(self) -> ComparedTensor:
        reference = self.reference()
        if reference is not None and reference._version == self.version:
            return compare_tensors(self.name, reference, reference, self.rtol, self.atol)
        return ComparedTensor(
            self.name, tuple(self.shape), self.dtype, 0.0, 0.0, math.nan, math.nan, True,
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
        self._entries = list(rows)
        self.layers = layers  # what was compared: which layers are hand-derived, which native (see describe_layers)

    @property
    def rows(self) -> list[ComparedTensor]:
        if any(type(entry) is not ComparedTensor for entry in self._entries):
            self._entries = [entry if type(entry) is ComparedTensor else entry.row() for entry in self._entries]
        return self._entries

    @rows.setter
    def rows(self, rows: Iterable[ComparedTensor | Settled | Identical]) -> None:
        self._entries = list(rows)

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
            headline = (
                f"{self.title}: MISMATCH in {len(bad)} of {len(self.rows)} tensors: "
                + ", ".join(row.name for row in bad)
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
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
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
    check_tolerances(rtol, atol)
    if actual is None or reference is None:
        present = reference if actual is None else actual
        if present is None:
            return ComparedTensor(name, None, None, 0.0, 0.0, 0.0, 0.0, True, "absent on both sides")
        side = "torchbp side" if actual is None else "reference side"
        return ComparedTensor(
            name, tuple(present.shape), present.dtype, float("inf"), float("inf"), 0.0, 0.0, False,
            f"missing on the {side}",
        )
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


def settle(
    pairs, rtol: float | None = None, atol: float | None = None, defer_equal: bool = False
) -> list[ComparedTensor | Settled | Identical]:
    """What :func:`compare_many` returns, with the rows of the common case not yet built.

    With ``defer_equal``, a pair with equal bits on the CPU is not even measured:
    its verdict (exact) needs no figure, and max |reference| is read from the
    reference tensor when the row is built (see :class:`Identical`).
    """
    check_tolerances(rtol, atol)
    entries = []
    for (name, actual, reference), figures in zip(pairs, _common_case_figures(pairs, defer_equal)):
        if figures is EQUAL_BITS:
            # A scalar (the loss) is held outright: it costs nothing and is often freed before its row is read.
            held = (lambda tensor=reference: tensor) if reference.dim() == 0 else weakref.ref(reference)
            entries.append(Identical(name, reference.shape, reference.dtype, held, reference._version, rtol, atol))
            continue
        if figures is not None:
            error, largest = figures
            tolerance = (0.0 if atol is None else atol) + (DEFAULT_RTOL.get(reference.dtype, 0.0) if rtol is None else rtol) * largest
            if error <= tolerance and math.isfinite(error) and math.isfinite(largest):  # then every element was finite
                entries.append(Settled(name, reference.shape, reference.dtype, error, largest, rtol, atol))
                continue
        entries.append(compare_tensors(name, actual, reference, rtol, atol))
    return entries


READING_A_BOOLEAN_IS_FREE = {"cpu"}  # device types where torch.equal does not wait on a queue of work
EQUAL_BITS = "equal bits"  # a figure left unmeasured: the pair is exact


def _common_case_figures(pairs, defer_equal: bool = False) -> list[tuple[float, float] | str | None]:
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
    figures: list[tuple[float, float] | str | None] = [None] * len(pairs)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (_, actual, reference) in enumerate(pairs):
        if _summarisable(actual, reference):
            groups.setdefault((reference.device, reference.dtype), []).append(i)
    with torch.no_grad():  # parameters are compared as values, not recorded
        for (device, dtype), indices in groups.items():
            actual, reference = [pairs[i][1] for i in indices], [pairs[i][2] for i in indices]
            if dtype.is_complex:
                actual, reference = [torch.view_as_real(t) for t in actual], [torch.view_as_real(t) for t in reference]
            if device.type in READING_A_BOOLEAN_IS_FREE:
                errors = [0.0 if torch.equal(a, b) else math.nan for a, b in zip(actual, reference)]
                if defer_equal:
                    for i, error in zip(indices, errors):
                        if error == 0:
                            figures[i] = EQUAL_BITS
                    indices = [i for i, error in zip(indices, errors) if error != 0]
                    actual, reference = [pairs[i][1] for i in indices], [pairs[i][2] for i in indices]
                    if dtype.is_complex:
                        actual, reference = [torch.view_as_real(t) for t in actual], [torch.view_as_real(t) for t in reference]
                    errors = [math.nan] * len(indices)
                largest = _maxima(torch._foreach_abs(reference)) if indices else []
            else:
                maxima = _maxima(_absolute_differences(actual, reference) + list(torch._foreach_abs(reference)))
                errors, largest = maxima[: len(indices)], maxima[len(indices) :]
            unequal = [k for k, error in enumerate(errors) if error != 0]
            if unequal and (device.type in READING_A_BOOLEAN_IS_FREE or dtype not in (torch.float64, torch.complex128)):
                in_float64 = _maxima(_absolute_differences(
                    [actual[k].double() for k in unequal], [reference[k].double() for k in unequal]
                ))
                for k, error in zip(unequal, in_float64):
                    errors[k] = error
            for i, error, maximum in zip(indices, errors, largest):
                figures[i] = (error, maximum)
    return figures


def _absolute_differences(actual: list[torch.Tensor], reference: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch._foreach_abs_(torch._foreach_sub(actual, reference)))


def _maxima(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's largest element, read back in one synchronisation."""
    return torch.stack(_foreach_max(tensors)).tolist()


def _foreach_max(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's largest element (one call where this PyTorch has torch._foreach_max)."""
    if hasattr(torch, "_foreach_max"):
        return torch._foreach_max(tensors)
    return [t.amax() for t in tensors]


def check_tolerances(rtol: float | None, atol: float | None) -> None:
    """A tolerance is a finite number ≥ 0, or None for the default."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number of at least 0 (or None for the default), got {value!r}")


def _summarisable(actual, reference) -> bool:
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


def _row(name, shape, dtype, max_abs: float, reference_max: float, rtol, atol) -> ComparedTensor:
    """The verdict on finite figures: max_abs ≤ atol + rtol · reference_max."""
    rtol = DEFAULT_RTOL.get(dtype, 0.0) if rtol is None else rtol
    atol = 0.0 if atol is None else atol
    if reference_max > 0:
        max_rel = max_abs / reference_max
    else:
        max_rel = 0.0 if max_abs == 0 else float("inf")
    tolerance = atol + rtol * reference_max
    return ComparedTensor(name, shape, dtype, max_abs, max_rel, tolerance, reference_max, max_abs <= tolerance)


def _compare_exactly(name: str, actual: torch.Tensor, reference: torch.Tensor) -> ComparedTensor:
    """Integers and booleans: equal or not, with no rounding through float64."""
    shape, dtype = tuple(reference.shape), reference.dtype
    ok = bool(torch.equal(actual, reference))
    max_abs = 0.0 if ok else float((actual.long() - reference.long()).abs().max().item())
    reference_max = float(reference.long().abs().max().item()) if reference.numel() else 0.0
    max_rel = max_abs / reference_max if reference_max else (0.0 if ok else float("inf"))
    return ComparedTensor(name, shape, dtype, max_abs, max_rel, 0.0, reference_max, ok, "" if ok else "not equal")


def _where(error: torch.Tensor, finite: torch.Tensor, max_abs: float) -> str:
    """Index of the largest error, to point a reader at it."""
    flat_index = torch.nonzero(finite.reshape(-1)).reshape(-1)[error.argmax()].item()
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), finite.shape))
    return f"largest error {max_abs:.3e} at index {index}"


def check_function(
    fn: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    reference: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    *inputs,
    grad_output: torch.Tensor | Sequence[torch.Tensor] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """Run ``fn`` and ``reference`` on copies of ``inputs``, backpropagate the same upstream
    gradient through both, and compare the outputs and the gradient of every input
    that requires grad.

    When no input requires grad, every floating-point tensor input is
    differentiated, so a check of gradients cannot quietly become a check of
    outputs alone. ``grad_output`` is the upstream gradient, one per output;
    when not given, it is drawn from a normal distribution with a fixed seed.
    Copies keep each input's strides, so a non-contiguous input stays
    non-contiguous, and both sides draw the same random numbers. Works for any
    pair of callables: pass your own autograd Function's ``apply`` as ``fn``.
    """
    report = Report(f"check_function({_callable_name(fn)})")
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
    if not wrt:
        wrt = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    actual_inputs = [_copy_leaf(x, requires_grad=i in wrt) for i, x in enumerate(inputs)]
    reference_inputs = [_copy_leaf(x, requires_grad=i in wrt) for i, x in enumerate(inputs)]
    randomness = SameRandomness()
    actual_outputs = _as_tuple(fn(*actual_inputs))
    randomness.replay()
    reference_outputs = _as_tuple(reference(*reference_inputs))

    count = max(len(actual_outputs), len(reference_outputs))
    pairs = [
        ("output" if count == 1 else f"output[{i}]", _get(actual_outputs, i), _get(reference_outputs, i))
        for i in range(count)
    ]
    grad_outputs = _grad_outputs(grad_output, reference_outputs)
    actual_grads = _gradients(actual_outputs, grad_outputs, [actual_inputs[i] for i in wrt])
    reference_grads = _gradients(reference_outputs, grad_outputs, [reference_inputs[i] for i in wrt])
    pairs += [(f"inputs[{i}].grad", mine, theirs) for i, mine, theirs in zip(wrt, actual_grads, reference_grads)]
    report.rows = settle(pairs, rtol, atol)
    return report


def check_model(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target: torch.Tensor,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """Compare the torchbp and the native version of ``model`` from identical parameters.

    ``model`` may be given in either form; neither it nor ``loss_fn`` is changed.
    A ``loss_fn`` that is a module is converted too (a plain function is used
    as it is on both sides). Both copies run forward, loss and backward on the
    same ``inputs`` and ``target``, drawing the same random numbers; the report
    compares the output, the loss, the gradient with respect to the input and
    every parameter's gradient by name. A model and loss with no layer that
    torchbp replaces raise ValueError: both sides would run native code.
    """
    require_hand_derived_layers("check_model", model, loss_fn)
    randomness = SameRandomness()
    hand = _run_model(convert, model, loss_fn, inputs, target)
    randomness.replay()
    native = _run_model(to_native, model, loss_fn, inputs, target)
    report = ModelPair(hand.model, native.model).compare(
        f"check_model({type(model).__name__})", (hand.loss, native.loss),
        outputs=(hand.output, native.output), inputs=(hand.input, native.input), rtol=rtol, atol=atol,
    )
    report.layers = describe_layers(model, loss_fn)
    return report


class ModelPair:
    """A torchbp model and its native twin of the same structure, matched parameter by parameter.

    The matching is made once, so comparing the two again and again (as
    :class:`torchbp.LockstepTrainer` does at every step) costs only the comparison.
    """

    def __init__(self, hand: torch.nn.Module, native: torch.nn.Module):
        self.hand, self.native = hand, native
        named = list(hand.named_parameters())
        self.names = [name for name, _ in named]
        self.grad_names = [f"{name}.grad" for name in self.names]
        self.hand_parameters = [parameter for _, parameter in named]
        self.native_parameters = list(native.parameters())

    def compare(
        self,
        title: str,
        losses: tuple[torch.Tensor, torch.Tensor],
        *,
        outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
        inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
        parameters: bool = False,
        rtol: float | None = None,
        atol: float | None = None,
        defer_equal: bool = False,
    ) -> Report:
        """Compare the two after both ran forward, loss and backward.

        Rows, in order: the output (when ``outputs`` is given), the loss, the input's
        gradient (when ``inputs`` is given and requires grad), then for each parameter
        by name its value (with ``parameters``) and its ``.grad``. :func:`check_model`
        and :class:`torchbp.LockstepTrainer` both report through this; the trainer
        passes ``defer_equal`` (see :func:`settle`), as most of its reports are never read.
        """
        pairs = [("output", *outputs)] if outputs is not None else []
        pairs.append(("loss", *losses))
        if inputs is not None and inputs[1].requires_grad:
            pairs.append(("input.grad", inputs[0].grad, inputs[1].grad))
        for name, grad_name, mine, theirs in zip(self.names, self.grad_names, self.hand_parameters, self.native_parameters):
            if parameters:
                pairs.append((name, mine, theirs))
            if mine.requires_grad or theirs.requires_grad:
                pairs.append((grad_name, mine.grad, theirs.grad))
        return Report(title, settle(pairs, rtol, atol, defer_equal))


def describe_layers(model: torch.nn.Module, loss_fn=None) -> str:
    """One line naming the layers of ``model`` (and of a loss module) torchbp replaces and those it leaves native.

    For example ``hand-derived: 0 Linear, 1 Sigmoid, loss MSELoss; native: 2 ReLU``.
    """
    def layers(module: torch.nn.Module, prefix: str) -> list[tuple[str, type]]:
        return [
            (f"{prefix}.{name}" if prefix and name else prefix or name, type(m))
            for name, m in module.named_modules()
            if not any(True for _ in m.children())  # leaves: the containers only arrange them
        ]

    found = layers(model, "") + (layers(loss_fn, "loss") if isinstance(loss_fn, torch.nn.Module) else [])
    torchbp_classes = set(HAND_DERIVED) | set(HAND_DERIVED.values())
    hand = [f"{name} {cls.__name__}" for name, cls in found if cls in torchbp_classes]
    native = [f"{name} {cls.__name__}" for name, cls in found if cls not in torchbp_classes]
    return f"hand-derived: {', '.join(hand) or 'none'}; native: {', '.join(native) or 'none'}"


def _callable_name(fn) -> str:
    """``Cube.apply`` for a Function's apply (whose __qualname__ is ``Function.apply``), else the qualified name."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__name__}.{fn.__name__}"
    return getattr(fn, "__qualname__", type(fn).__name__)


def require_hand_derived_layers(caller: str, model: torch.nn.Module, loss_fn) -> None:
    """Refuse a model (and loss) in which torchbp would replace nothing."""
    modules = [*model.modules(), *(loss_fn.modules() if isinstance(loss_fn, torch.nn.Module) else [])]
    if not any(type(m) in HAND_DERIVED or type(m) in HAND_DERIVED.values() for m in modules):
        raise ValueError(
            f"{caller}: {type(model).__name__} holds no layer that torchbp replaces "
            f"({', '.join(cls.__name__ for cls in HAND_DERIVED)}), so both sides would run native code"
        )


class _SideRun(NamedTuple):
    model: torch.nn.Module
    input: torch.Tensor
    output: torch.Tensor
    loss: torch.Tensor


def _run_model(to_side, model, loss_fn, inputs, target) -> _SideRun:
    """Forward, loss and backward on one side's copy, the gradients left in ``.grad``."""
    side_model = to_side(model)
    side_model.zero_grad(set_to_none=True)  # the copy's own gradients only
    side_loss = to_side(loss_fn) if isinstance(loss_fn, torch.nn.Module) else loss_fn
    x = _copy_leaf(inputs, requires_grad=inputs.is_floating_point())
    output = side_model(x)
    loss = side_loss(output, target)
    if loss.requires_grad:
        loss.backward(torch.ones_like(loss))
    return _SideRun(side_model, x, output, loss)


def _copy_leaf(x, requires_grad: bool | None = None):
    """A new leaf with x's values and strides, so each side gets its own graph and grads."""
    if not isinstance(x, torch.Tensor):
        return copy.deepcopy(x)
    requires_grad = x.requires_grad if requires_grad is None else requires_grad
    try:
        leaf = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        leaf.copy_(x.detach())
    except RuntimeError:  # overlapping strides (an expanded tensor) cannot be written to
        leaf = x.detach().clone()
    return leaf.requires_grad_(requires_grad)


def _as_tuple(output) -> tuple:
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def _get(items: Sequence, i: int):
    return items[i] if i < len(items) else None


def _grad_outputs(given, reference_outputs: tuple) -> tuple:
    if given is not None:
        return _as_tuple(given)
    generator = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.dtype).to(out.device)
        if isinstance(out, torch.Tensor) and out.is_floating_point()
        else None
        for out in reference_outputs
    )


def _gradients(outputs: tuple, grad_outputs: tuple, wrt: list[torch.Tensor]) -> list:
    """∂(Σ outputs · grad_outputs)/∂wrt; None for each when nothing is differentiable."""
    pairs = [
        (out, g) for out, g in zip(outputs, grad_outputs)
        if isinstance(out, torch.Tensor) and out.requires_grad and g is not None
    ]
    if not pairs or not wrt:
        return [None] * len(wrt)
    outs, gs = zip(*pairs)
    return list(torch.autograd.grad(outs, wrt, gs, allow_unused=True, materialize_grads=True))
