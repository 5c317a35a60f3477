"""A corpus of hand-written autograd Functions, each with one realistic mistake, for torchbp.verify.

Every entry pairs a *broken* Function with its correct *twin* (twins are shared
where the correct code is the same) and a native torch *reference*. The broken
one fails exactly the properties in ``fails``, and the twin fails none: each
entry specifies the mistake that one property (or the few named) catches, and
``why`` says why exactly those.

Properties held to the reference (float64, float32, autocast, memory, empty-batch)
see a wrong formula. The transforms and layouts are held to fn's own eager
float64 result, so a wrong formula alone does not fail them.

Every Function uses the modern form (forward without ctx, setup_context,
backward, ``generate_vmap_rule = True``), saves tensors with
``ctx.save_for_backward``, honours ``ctx.needs_input_grad`` and keeps its
backward differentiable, apart from its one mistake. A broken Function
subclasses its twin and overrides the method that holds the mistake, so the
difference is the mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.autograd.function import once_differentiable


class Mistake(NamedTuple):
    name: str  # a short phrase: the test id
    broken: Callable  # fn with the mistake
    twin: Callable  # the same fn done right
    reference: Callable  # a native torch expression of the same function
    inputs: Callable[[], tuple]  # the example inputs, seeded
    options: dict  # verify's keyword options, besides compile_backend
    fails: frozenset  # exactly the properties the broken fn fails
    why: str  # why exactly those


def examples(*shapes: tuple) -> tuple:
    """Seeded standard-normal float64 tensors of the given shapes."""
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes)


def rows(t: torch.Tensor) -> torch.Tensor:
    """(*, f) -> (n, f): every leading dimension holds samples, however many there are (none under vmap)."""
    return t.reshape(-1, t.shape[-1])


# -- linear: x Wᵀ + b ------------------------------------------------------------------------


class Linear(Function):
    """x Wᵀ + b, done right: the twin of the linear mistakes."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, W, b):
        return F.linear(x, W, b)  # under autocast in bfloat16, as the reference

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, _ = inputs
        need_x, need_W, _ = ctx.needs_input_grad
        ctx.save_for_backward(x if need_W else None, W if need_x else None)

    @staticmethod
    def backward(ctx, g):
        # type_as(g): under autocast g is bfloat16, as forward's product was, where x and W are float32.
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = rows(g).T @ rows(x).type_as(g) if need_W else None
        gb = rows(g).sum(0) if need_b else None
        return gx, gW, gb


class TransposedGradient(Linear):
    """The weight's gradient transposed, xᵀ g for gᵀ x: a square W hides it from the shape checks."""

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = rows(x).type_as(g).T @ rows(g) if need_W else None
        gb = rows(g).sum(0) if need_b else None
        return gx, gW, gb


class AveragedBias(Linear):
    """The bias's gradient averaged over the samples it was broadcast to: a broadcast's adjoint is a sum."""

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = rows(g).T @ rows(x).type_as(g) if need_W else None
        gb = rows(g).mean(0) if need_b else None
        return gx, gW, gb


class UnsummedBias(Linear):
    """The bias's gradient g itself, not summed over the samples. Not a mistake in the end: autograd sums it."""

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = rows(g).T @ rows(x).type_as(g) if need_W else None
        gb = g if need_b else None
        return gx, gW, gb


class BatchAssumed(Linear):
    """Written for a (n, o) g: gᵀ x and g.sum(0) are wrong for the one sample that vmap(grad) passes in."""

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = g.T @ x.type_as(g) if need_W else None
        gb = g.sum(0) if need_b else None
        return gx, gW, gb


def contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    """rows(t) without a copy, with the row-major strides written out: right only for a contiguous t."""
    f = t.shape[-1]
    return t.as_strided((t.numel() // f, f), (f, 1))


class ContiguousOnly(Linear):
    """The weight's gradient reads x with as_strided and row-major strides, so other layouts read the wrong values."""

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = rows(g).T @ contiguous_rows(x).type_as(g) if need_W else None
        gb = rows(g).sum(0) if need_b else None
        return gx, gW, gb


class StashedOnCtx(Linear):
    """x kept as ctx.x, not saved with save_for_backward: an in-place write to x goes unnoticed."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, _ = inputs
        need_x, need_W, _ = ctx.needs_input_grad
        ctx.x = x if need_W else None
        ctx.save_for_backward(W if need_x else None)

    @staticmethod
    def backward(ctx, g):
        x, (W,) = ctx.x, ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        gx = g @ W.type_as(g) if need_x else None
        gW = rows(g).T @ rows(x).type_as(g) if need_W else None
        gb = rows(g).sum(0) if need_b else None
        return gx, gW, gb


class EveryGradient(Linear):
    """Ignores ctx.needs_input_grad: it saves both inputs and computes all three gradients every time."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, _ = inputs
        ctx.save_for_backward(x, W)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        return g @ W.type_as(g), rows(g).T @ rows(x).type_as(g), rows(g).sum(0)


class SavedForTheWrongGradient(Linear):
    """Saves each input for its own gradient, not the other's: when only x requires grad, W is missing."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, _ = inputs
        need_x, need_W, _ = ctx.needs_input_grad
        ctx.save_for_backward(x if need_x else None, W if need_W else None)


class UndoesAutocast(Linear):
    """.to(x.dtype) on the output to keep the input's dtype, which undoes autocast's bfloat16."""

    @staticmethod
    def forward(x, W, b):
        return F.linear(x, W, b).to(x.dtype)


class BranchesOnValue(Linear):
    """Skips a zero bias with a Python `if` on its values, which the compiler cannot trace."""

    @staticmethod
    def forward(x, W, b):
        return F.linear(x, W, b if b.any() else None)


class NoVmapRule(Linear):
    """Leaves out generate_vmap_rule = True, so vmap cannot batch its forward."""

    generate_vmap_rule = False


class OldStyleLinear(Function):
    """The old form: ctx as forward's first argument and no setup_context. torch.func refuses it."""

    @staticmethod
    def forward(ctx, x, W, b):
        need_x, need_W, _ = ctx.needs_input_grad
        ctx.save_for_backward(x if need_W else None, W if need_x else None)
        return F.linear(x, W, b)

    backward = Linear.backward


def linear_inputs() -> tuple:
    """6 samples of 4 features, a square 4 × 4 weight, a bias."""
    return examples((6, 4), (4, 4), (4,))


# -- sigmoid --------------------------------------------------------------------------------


class Sigmoid(Function):
    """σ(x), done right: the twin of the sigmoid mistakes."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


class DetachedBackward(Sigmoid):
    """y.detach() in backward: the second derivative through y is silently zero."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        y = y.detach()
        return g * y * (1 - y)


class NoGradBackward(Sigmoid):
    """The backward runs under torch.no_grad() to save memory, so it cannot be differentiated at all."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        with torch.no_grad():
            return g * y * (1 - y)


class NumpyBackward(Sigmoid):
    """The backward is computed in NumPy, outside autograd and out of reach of torch.func."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.from_numpy(g.numpy() * (y * (1 - y)).numpy())


class WritesIntoGradOutput(Sigmoid):
    """The backward multiplies into g in place to save an allocation, but g belongs to the caller."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g.mul_(y * (1 - y))


class OverflowingSigmoid(Sigmoid):
    """σ'(x) as e⁻ˣ / (1 + e⁻ˣ)² from the saved x: in float32 e¹⁰⁰ overflows, and inf / inf is NaN."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        e = torch.exp(-x)
        return g * e / (1 + e) ** 2


class SigmoidWithJvp(Sigmoid):
    """σ(x) with forward mode too, done right."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * y * (1 - y)


class WrongJvp(SigmoidWithJvp):
    """The jvp leaves out the (1 - y) factor that the backward has."""

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * y


class OnceDifferentiableSigmoid(Sigmoid):
    """σ(x) with a backward marked @once_differentiable on purpose: not a mistake when declared to verify."""

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


def batch_inputs() -> tuple:
    """6 samples of 4 features."""
    return examples((6, 4))


def saturated_inputs() -> tuple:
    """Two inputs far in the tails, ±100, where a naive formula overflows in float32."""
    (x,) = batch_inputs()
    x[0, :2] = torch.tensor([-100.0, 100.0])
    return (x,)


# -- GELU, exact: x Φ(x) ----------------------------------------------------------------------


class Gelu(Function):
    """x Φ(x) with Φ the normal CDF, done right."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        return g * (cdf + x * pdf)


class GeluShortConstant(Gelu):
    """1/√(2π) typed as 0.39894: off by 6e-6 relative, too little for float32's or finite differences' tolerance."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-x * x / 2) * 0.39894
        return g * (cdf + x * pdf)


class OffInFloat64(Sigmoid):
    """A float64-only branch (a "precise" path) whose factor is 1e-4 off: too little for gradcheck's rtol 1e-3."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if y.dtype == torch.float64:
            return g * y * (1 - y) * (1 + 1e-4)
        return g * y * (1 - y)


# -- log-sum-exp over the last dimension ---------------------------------------------------------


class LogSumExp(Function):
    """log Σⱼ exp(xⱼ) per row, stabilised by each row's max, done right."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        m = x.amax(-1, keepdim=True)
        return m.squeeze(-1) + (x - m).exp().sum(-1).log()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        return g.unsqueeze(-1) * (x - out.unsqueeze(-1)).exp()  # g softmax(x)


class GlobalMaxLogSumExp(LogSumExp):
    """Stabilised by the whole batch's max, x.max(): same values, but a batch with no samples has no max."""

    @staticmethod
    def forward(x):
        m = x.max()
        return m + (x - m).exp().sum(-1).log()


def logsumexp_inputs() -> tuple:
    return examples((6, 5))


# -- division by a temperature ------------------------------------------------------------------


class Temperature(Function):
    """x / t for a scalar tensor t, done right."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, t):
        return x / t

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, t = inputs
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, t)

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad
        gx = g / t if need_x else None
        gt = -(g * x).sum() / t**2 if need_t else None
        return gx, gt


class TemperatureItem(Temperature):
    """Reads t as a Python float with t.item() in backward, which takes t out of the graph."""

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad
        t = t.item()
        gx = g / t if need_x else None
        gt = -(g * x).sum() / t**2 if need_t else None
        return gx, gt


def temperature_inputs() -> tuple:
    """6 samples of 4 features, a temperature (a scalar, shared by every sample)."""
    x, t = examples((6, 4), ())
    return x, t.abs() + 0.5


# -- the first column times a weight ------------------------------------------------------------


class Scale(Function):
    """c w for a column c (n, 1) and a weight w (o,), done right."""

    generate_vmap_rule = True

    @staticmethod
    def forward(c, w):
        return c * w

    @staticmethod
    def setup_context(ctx, inputs, output):
        c, w = inputs
        need_c, need_w = ctx.needs_input_grad
        ctx.save_for_backward(c if need_w else None, w if need_c else None)

    @staticmethod
    def backward(ctx, g):
        c, w = ctx.saved_tensors
        need_c, need_w = ctx.needs_input_grad
        gc = (g * w).sum(-1, keepdim=True) if need_c else None
        gw = rows(g * c).sum(0) if need_w else None
        return gc, gw


def first_column_times(x, w):
    """x's first column times w, done right: the column is sliced before the Function, which sees and saves only it."""
    return Scale.apply(x[..., :1], w)


class FirstColumnTimes(Function):
    """x's first column times w, sliced inside: it saves the whole of x, though its backward reads only that column."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return x[..., :1] * w

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w = inputs
        need_x, need_w = ctx.needs_input_grad
        ctx.save_for_backward(x if need_w else None, w if need_x else None)
        ctx.features = x.shape[-1]

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        gx = F.pad((g * w).sum(-1, keepdim=True), (0, ctx.features - 1)) if need_x else None
        gw = rows(g * x[..., :1]).sum(0) if need_w else None
        return gx, gw


def column_inputs() -> tuple:
    """6 samples of 4 features, a weight of 3."""
    return examples((6, 4), (3,))


# -- the corpus ---------------------------------------------------------------------------------

VALUES = frozenset({"float64", "float32", "gradcheck"})
DOUBLE_BACKWARD = frozenset({"double-backward"})


def logsumexp(x):
    return torch.logsumexp(x, -1)


def first_column_times_native(x, w):
    return x[..., :1] * w


CORPUS: list[Mistake] = [
    Mistake(
        "transposed gradient",
        TransposedGradient.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        VALUES,
        "a wrong gradient is wrong against the reference in both dtypes and against finite differences; "
        "the transforms and layouts hold fn to itself",
    ),
    Mistake(
        "averaged bias gradient",
        AveragedBias.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        VALUES | {"empty-batch"},
        "a gradient 1/n too small is wrong everywhere it is compared with the truth, and the mean of no "
        "samples is NaN where the reference's sum is 0",
    ),
    Mistake(
        "detached backward",
        DetachedBackward.apply,
        Sigmoid.apply,
        torch.sigmoid,
        batch_inputs,
        {},
        DOUBLE_BACKWARD,
        "the first derivative is right; only differentiating the backward sees the missing term",
    ),
    Mistake(
        "backward under no_grad",
        NoGradBackward.apply,
        Sigmoid.apply,
        torch.sigmoid,
        batch_inputs,
        {},
        DOUBLE_BACKWARD,
        "the first derivative is right; the backward records no graph, so only its own derivative is missing",
    ),
    Mistake(
        "backward in numpy",
        NumpyBackward.apply,
        Sigmoid.apply,
        torch.sigmoid,
        batch_inputs,
        {},
        DOUBLE_BACKWARD | {"vmap-grad", "jacrev"},
        "numpy() refuses a g that requires grad (double backward) and the storage-less batched g that torch.func "
        "passes the backward (vmap-grad, jacrev); the compiler traces numpy, and vmap runs no backward",
    ),
    Mistake(
        "backward reads .item()",
        TemperatureItem.apply,
        Temperature.apply,
        torch.div,
        temperature_inputs,
        {},
        DOUBLE_BACKWARD,
        "a Python float is a constant to autograd: only the second derivative through t is lost; t is "
        "shared, not batched, so torch.func can read it, and the compiler copes with item() in a backward",
    ),
    Mistake(
        "backward writes into grad_output",
        WritesIntoGradOutput.apply,
        Sigmoid.apply,
        torch.sigmoid,
        batch_inputs,
        {},
        DOUBLE_BACKWARD,
        "g is a fresh tensor nobody reads again except when the backward is differentiated: then g is a "
        "leaf that requires grad, and autograd refuses the in-place write",
    ),
    Mistake(
        "tensor stashed on ctx",
        StashedOnCtx.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"in-place"}),
        "ctx.x has no version check, so only a write into x between forward and backward shows it; "
        "memory counts ctx.x as a saved tensor",
    ),
    Mistake(
        "gradient for contiguous inputs only",
        ContiguousOnly.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"non-contiguous"}),
        "every other property passes contiguous inputs; transposed and strided x give a silently wrong weight "
        "gradient, and an expanded x is out of as_strided's bounds",
    ),
    Mistake(
        "needs_input_grad ignored",
        EveryGradient.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"needs-input-grad"}),
        "the gradients are right and autograd drops the unwanted ones; only asking for a subset sees them "
        "computed; with every input requiring grad it saves what the reference saves",
    ),
    Mistake(
        "saved for the wrong gradient",
        SavedForTheWrongGradient.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"needs-input-grad"}),
        "when every input requires grad both are saved and all is right; only a subset leaves W unsaved",
    ),
    Mistake(
        "whole input saved for one column",
        FirstColumnTimes.apply,
        first_column_times,
        first_column_times_native,
        column_inputs,
        {},
        frozenset({"memory"}),
        "the values and gradients are right; only the saved bytes, 4 columns where the reference keeps 1, differ",
    ),
    Mistake(
        "output cast back to the input dtype",
        UndoesAutocast.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"autocast"}),
        "outside autocast the cast does nothing; under it the output is float32 where F.linear's is bfloat16",
    ),
    Mistake(
        "old-style Function",
        OldStyleLinear.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"vmap", "vmap-grad", "jacrev", "jvp"}),
        "torch.func refuses any Function without setup_context, so every torch.func property fails, jvp "
        "included; autograd and the compiler take the old form",
    ),
    Mistake(
        "no vmap rule",
        NoVmapRule.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"vmap", "vmap-grad"}),
        "only vmapping the forward needs the rule; jacrev vmaps the backward alone, which is ordinary torch operations",
    ),
    Mistake(
        "branch on a tensor value",
        BranchesOnValue.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"compile", "compile-dynamic"}),
        "only the compiler needs the branch decided while tracing (the batch fixed or symbolic); eager code and "
        "torch.func read the shared, unbatched bias",
    ),
    Mistake(
        "max over the whole batch",
        GlobalMaxLogSumExp.apply,
        LogSumExp.apply,
        logsumexp,
        logsumexp_inputs,
        {},
        frozenset({"empty-batch"}),
        "any constant stabilises log-sum-exp, so the values are right wherever a max exists; only a batch "
        "with no samples has none (vmap sees one sample at a time, which has)",
    ),
    Mistake(
        "constant short by 6e-6",
        GeluShortConstant.apply,
        Gelu.apply,
        F.gelu,
        batch_inputs,
        {},
        frozenset({"float64"}),
        "a relative error near 1e-6 is over float64's rtol 1e-7, under float32's 1e-5 and gradcheck's 1e-3",
    ),
    Mistake(
        "off by 1e-4 in float64 only",
        OffInFloat64.apply,
        Sigmoid.apply,
        torch.sigmoid,
        batch_inputs,
        {},
        frozenset({"float64"}),
        "gradcheck runs in float64 too but allows rtol 1e-3; float32 takes the right branch; the transforms "
        "and layouts compare fn with itself, wrong alike on both sides",
    ),
    Mistake(
        "wrong jvp",
        WrongJvp.apply,
        SigmoidWithJvp.apply,
        torch.sigmoid,
        batch_inputs,
        {"skip": ("compile", "compile-dynamic")},
        frozenset({"jvp"}),
        "only forward mode calls jvp; compile and compile-dynamic are skipped because Dynamo refuses any Function "
        "with a custom jvp, the correct twin included",
    ),
    Mistake(
        "backward assumes a batch",
        BatchAssumed.apply,
        Linear.apply,
        F.linear,
        linear_inputs,
        {},
        frozenset({"vmap-grad"}),
        "only vmap(grad) runs the backward on one sample, whose g has no batch dimension; jacrev's "
        "g keeps the batch dimension",
    ),
    Mistake(
        "float32 overflow",
        OverflowingSigmoid.apply,
        Sigmoid.apply,
        torch.sigmoid,
        saturated_inputs,
        {},
        frozenset({"float32", "autocast"}),
        "e¹⁰⁰ is finite in float64 and inf in float32; autocast computes in float32 too, since sigmoid is "
        "no bfloat16 op",
    ),
]
