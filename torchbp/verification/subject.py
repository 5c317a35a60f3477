"""What is verified: ``fn``, its ``reference`` and the example inputs, in the forms the properties need.

Every property builds its own fresh inputs from the examples (:meth:`Subject.inputs`):
in a dtype, on a device, with a layout, with a number of samples along the
batch dimensions, with a chosen set requiring grad. The upstream gradient is
drawn once from a seeded generator, so every run is compared under the same one.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchbp.check import SameRandomness, _callable_name, _gradients, as_tuple
from torchbp.compare import DEFAULT_RTOL, ComparedTensor, compare_tensors
from torchbp.verification.outcome import Failed

UPSTREAM_STREAM = 0x5EED_0F_6  # an offset no one seeds their examples with


class Run(NamedTuple):
    """One forward and backward: the inputs it was given, its outputs, the gradients of the differentiable inputs."""

    inputs: list[Any]
    outputs: tuple[Any, ...]  # whatever fn returned: tensors, or anything else
    grads: list[Any]  # tensors, or None where none flowed


class Examples:
    """The example inputs, in the forms the properties need: which are differentiated, where the batch is,
    and fresh copies in any dtype, device, layout and number of samples."""

    def __init__(self, inputs: Sequence[Any], batch_dims: Sequence[int | None] | None, nondiff: Sequence[int]):
        self.examples = list(inputs)
        self.tensors = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        floating = [i for i in self.tensors if inputs[i].is_floating_point()]
        asked = [i for i in floating if inputs[i].requires_grad]
        self.differentiable = [i for i in (asked or floating) if i not in set(nondiff)]
        self.batch_dims = self._batch_dims(batch_dims)
        self.batch_dims_given = batch_dims is not None
        self.device: torch.device | str | None = None  # where inputs() makes them unless told: the examples'

    # -- inputs ---------------------------------------------------------------------------

    def _batch_dims(self, given: Sequence[int | None] | None) -> list[int | None]:
        """Per input, the dimension holding the batch, or None.

        By default dimension 0 of the first floating-point tensor when it has two
        dimensions or more (a 1-d input may be one vector, not a batch of
        scalars), of every other tensor with exactly its shape (a target, a
        second operand of an elementwise op), and of every integer or boolean
        tensor whose first size is its (class labels (N,) or (N, T), a sort's
        permutation, a mask); other inputs (weights) are shared by all samples.
        """
        if given is not None:
            return list(given)
        first = next(self.examples[i] for i in self.tensors if self.examples[i].is_floating_point())
        if first.dim() < 2:
            return [None] * len(self.examples)

        def batched(x: torch.Tensor) -> bool:
            indices = not x.is_floating_point() and not x.is_complex() and x.dim() >= 1
            return x.shape == first.shape or (indices and x.shape[0] == first.shape[0])

        return [0 if i in self.tensors and batched(self.examples[i]) else None for i in range(len(self.examples))]

    def describe_inputs(self) -> str:
        """One line: which inputs are differentiated, and where the batch is (what the defaults chose)."""
        differentiated = ", ".join(f"inputs[{i}]" for i in self.differentiable)
        batch = ", ".join(f"inputs[{i}] dim {d}" for i, d in enumerate(self.batch_dims) if d is not None)
        return f"differentiating {differentiated}; batch along {batch or 'none'} ({self.batch_origin()})"

    def batch_origin(self) -> str:
        """Where the batch dimensions came from, and how to change them."""
        if self.batch_dims_given:
            return "as batch_dims gives"
        if not self.batched:
            return "inferred: the first floating-point input has fewer than 2 dimensions; batch_dims= gives one"
        return "inferred; batch_dims= changes it"

    @property
    def batched(self) -> list[int]:
        """The inputs that have a batch dimension."""
        return [i for i, d in enumerate(self.batch_dims) if d is not None]

    @property
    def batch_size(self) -> int:
        size: int = min(self.examples[i].shape[self.batch_dims[i]] for i in self.batched)
        return size

    def inputs(
        self,
        dtype: torch.dtype = torch.float64,
        *,
        requires: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        layout: Callable[[torch.Tensor], torch.Tensor] | None = None,
        samples: int | None = None,
    ) -> list[Any]:
        """Fresh leaves from the examples: floating-point ones in ``dtype``, the inputs in ``requires``
        (all differentiable ones by default) requiring grad, ``samples`` samples along the batch
        dimensions (the first ones; the examples' samples over again where more are asked), each laid out
        by ``layout`` (same values, other strides)."""
        requiring = set(self.differentiable if requires is None else requires)
        device = self.device if device is None else device
        made = []
        for i, x in enumerate(self.examples):
            if not isinstance(x, torch.Tensor):
                made.append(x)
                continue
            x = x.detach()
            dim = self.batch_dims[i]
            if samples is not None and dim is not None:
                x = x.index_select(dim, torch.arange(samples, device=x.device) % x.shape[dim])
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype, copy=True)
            if layout is not None:
                x = layout(x)
            made.append(x.requires_grad_(i in requiring))
        return made

    def subsets(self) -> list[tuple[int, ...]]:
        """The sets of differentiable inputs a backward may be asked for: all of them while that is few."""
        d = self.differentiable
        if len(d) <= 4:
            return [s for k in range(1, len(d) + 1) for s in itertools.combinations(d, k)]
        return [(i,) for i in d] + [tuple(d)]


class Subject(Examples):
    """``fn`` and ``reference`` with their example inputs, and what verify's properties share: running both
    from fresh inputs under one seeded upstream gradient, and comparing them."""

    def __init__(
        self,
        fn: Callable[..., Any],
        reference: Callable[..., Any] | None,
        inputs: Sequence[Any],
        *,
        batch_dims: Sequence[int | None] | None,
        nondiff: Sequence[int],
        once_differentiable: bool,
        rtol: float | None,
        atol: float | None,
        compile_backend: str,
        seed: int,
        memory_ratio: float | None = None,
    ) -> None:
        super().__init__(inputs, batch_dims, nondiff)
        self.fn, self.reference = fn, reference
        self.name = _callable_name(fn)
        self.once_differentiable = once_differentiable
        self.rtol, self.atol = rtol, atol
        self.compile_backend = compile_backend
        self.seed = seed
        self.memory_ratio = memory_ratio
        self.skipped: frozenset[str] = frozenset()  # the properties verify was told to leave out
        self._baseline: Run | None = None

    def on(self, device: torch.device | str) -> Subject:
        """This subject with its inputs made on ``device``: the properties run there, held to fn there."""
        there = copy.copy(self)
        there.device, there._baseline = device, None
        return there

    # -- running --------------------------------------------------------------------------

    def upstream(self, outputs: Sequence[Any]) -> tuple[torch.Tensor | None, ...]:
        """The upstream gradient for each output: normal, from the seeded generator (None for the rest).

        Its stream is offset from ``seed``: examples drawn from ``manual_seed(0)`` in the output's shape
        would otherwise equal it, and with g = x a transposed weight gradient gᵀx = xᵀg goes unseen.
        """
        generator = torch.Generator().manual_seed(UPSTREAM_STREAM + self.seed)
        return tuple(
            torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.dtype).to(out.device)
            if isinstance(out, torch.Tensor) and (out.is_floating_point() or out.is_complex())
            else None
            for out in outputs
        )

    def run(
        self,
        fn: Callable[..., Any],
        inputs: list[Any],
        wrt: Sequence[int] | None = None,
        upstream: tuple[torch.Tensor | None, ...] | None = None,
    ) -> Run:
        """Forward ``fn`` on ``inputs`` and backpropagate ``upstream`` (the seeded one by default)
        to the inputs in ``wrt`` (the differentiable ones)."""
        outputs = as_tuple(fn(*inputs))
        return Run(inputs, outputs, self.gradients(outputs, inputs, wrt, upstream))

    def gradients(
        self,
        outputs: tuple[Any, ...],
        inputs: list[Any],
        wrt: Sequence[int] | None = None,
        upstream: tuple[torch.Tensor | None, ...] | None = None,
    ) -> list[Any]:
        """∂(Σ outputs · upstream)/∂inputs[i] for each i in ``wrt`` (the differentiable inputs)."""
        wrt = self.differentiable if wrt is None else wrt
        upstream = self.upstream(outputs) if upstream is None else upstream
        return _gradients(outputs, upstream, [inputs[i] for i in wrt])

    def run_both(self, dtype: torch.dtype, **options: Any) -> tuple[Run, Run]:
        """fn and the reference from identical inputs, drawing the same random numbers."""
        assert self.reference is not None  # the properties that compare with it check for one first
        randomness = SameRandomness()
        mine = self.run(self.fn, self.inputs(dtype, **options))
        randomness.replay()
        theirs = self.run(self.reference, self.inputs(dtype, **options))
        return mine, theirs

    @property
    def baseline(self) -> Run:
        """fn, eagerly, in float64, on contiguous inputs: what the transforms and layouts are held to."""
        if self._baseline is None:
            self._baseline = self.run(self.fn, self.inputs())
        return self._baseline

    # -- comparing ------------------------------------------------------------------------

    def pairs(self, mine: Run, theirs: Run, wrt: Sequence[int] | None = None) -> list[tuple[str, Any, Any]]:
        """(name, fn's, reference's) for each output and each gradient."""
        wrt = self.differentiable if wrt is None else wrt
        count = len(theirs.outputs)
        pairs = [
            ("output" if count == 1 else f"output[{k}]", a, b)
            for k, (a, b) in enumerate(zip(mine.outputs, theirs.outputs))
            if isinstance(b, torch.Tensor)
        ]
        return pairs + [(f"inputs[{i}].grad", a, b) for i, a, b in zip(wrt, mine.grads, theirs.grads)]

    def compare(self, pairs: list[tuple[str, Any, Any]], rtol: float | None = None, atol: float | None = None) -> str:
        """Compare every pair (see :mod:`torchbp.compare`); raise Failed naming the worst, else say how close."""
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        if not pairs:
            raise Failed("nothing to compare: no output and no gradient")
        rows = []
        for name, a, b in pairs:
            if a is None or b is None:
                raise Failed(
                    f"{name}: {'none' if a is None else 'given'} here, "
                    f"{'none' if b is None else 'given'} in what it is held to"
                )
            rows.append(compare_tensors(name, a, b, rtol, atol))
        bad = [row for row in rows if not row.ok]
        if bad:
            raise Failed("; ".join(_describe(row, rtol) for row in bad[:3]))
        worst = max(rows, key=lambda row: row.max_rel_error)
        return (
            f"largest rel. error {worst.max_rel_error:.1e} "
            f"(rtol {_rtol(worst.dtype, rtol):.0e}) over {len(rows)} tensor{'s' if len(rows) > 1 else ''}"
        )


def _rtol(dtype: torch.dtype | None, rtol: float | None) -> float:
    if rtol is not None:
        return rtol
    return 0.0 if dtype is None else DEFAULT_RTOL.get(dtype, 0.0)


def _describe(row: ComparedTensor, rtol: float | None) -> str:
    if row.note and (math.isinf(row.max_abs_error) or row.note.startswith("NaN")):  # metadata, or non-finite
        return f"{row.name}: {row.note}"
    return f"{row.name}: rel. error {row.max_rel_error:.1e} > rtol {_rtol(row.dtype, rtol):.0e}"


def is_custom_op(fn: Any) -> bool:
    """A torch.library custom op: what ``torch.library.custom_op`` returns, or an operator overload."""
    return isinstance(fn, (torch._library.custom_ops.CustomOpDef, torch._ops.OpOverload, torch._ops.OpOverloadPacket))


def functions_of(outputs: Sequence[Any]) -> list[type[torch.autograd.Function]]:
    """The autograd.Function classes whose nodes produced ``outputs``, each once (torchbp's eager twin of a
    Function counted as the Function, which torch.func runs in its place)."""
    found: dict[type[torch.autograd.Function], None] = {}
    for node in custom_nodes(outputs):
        cls = node._forward_cls  # type: ignore[attr-defined]
        found[cls.__dict__.get("eager_twin_of", cls)] = None
    return list(found)


def custom_nodes(outputs: Sequence[Any]) -> list[torch.autograd.function.BackwardCFunction]:
    """The autograd.Function nodes in the graph that produced ``outputs``."""
    found: list[torch.autograd.function.BackwardCFunction] = []
    seen: set[torch.autograd.graph.Node] = set()
    stack: list[torch.autograd.graph.Node | None] = [
        out.grad_fn for out in outputs if isinstance(out, torch.Tensor) and out.grad_fn is not None
    ]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found
