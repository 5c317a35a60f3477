"""torchbp.verify: its report, its options, its errors, and torchbp's own Functions passing it.

That each property catches the mistake it names is tests/test_verify_corpus.py's job.
"""

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_compiler
from torch._dynamo.backends.common import aot_autograd
from torch.func import functional_call

import torchbp
import torchbp.functional as TF
from torchbp.functions import LinearFunction, SequentialFunction
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES
from torchbp.verification.report import FAIL, NOT_APPLICABLE, PASS, SKIPPED

from verify_corpus_in_the_wild import (
    ClassMethodSquare,
    FirstTwoColumns,
    GradientReversal,
    OldStyleSquare,
    SavedVariablesSquare,
    SortValues,
    SquareRoot,
    cube,
    positive,
    sort_inputs,
    with_a_zero,
)

OPCHECK = CUSTOM_OP_PROPERTIES  # not applicable but to custom ops
FAST = dict(compile_backend="aot_eager")  # graph breaks and backward tracing as with inductor, less code generation


def examples(*shapes):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


# -- torchbp's own Functions --------------------------------------------------------------------

CHAIN = ("linear", "sigmoid", "linear", "sigmoid", "mse_loss", "scale")


def derivation_cost(x, y, w1, b1, w2, b2):
    """J = ½ Σ (y − ŷ)² of the 2-3-1 sigmoid network, natively."""
    return 0.5 * F.mse_loss(torch.sigmoid(F.linear(torch.sigmoid(F.linear(x, w1, b1)), w2, b2)), y, reduction="sum")


def chain_function(x, y, w1, b1, w2, b2):
    """The same, as one SequentialFunction."""
    return SequentialFunction.apply(x, CHAIN, w1, b1, w2, b2, y, "sum", 0.5)[-1]


def fused_cost():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    fused = torchbp.fuse_loss(net, torch.nn.MSELoss(reduction="sum"), scale=0.5)
    names = [name for name, _ in fused.named_parameters()]

    def cost(x, y, *parameters):
        return functional_call(fused, dict(zip(names, parameters)), (x, y))

    return cost


class Own(NamedTuple):
    name: str
    fn: Callable
    reference: Callable
    inputs: tuple
    options: dict
    not_applicable: frozenset


DERIVATION_INPUTS = examples((5, 2), (5, 1), (3, 2), (3,), (1, 3), (1,))
DERIVATION_BATCH = dict(batch_dims=(0, 0, None, None, None, None))
ONE_INPUT = frozenset({"jvp", "needs-input-grad"})

OWN = [
    Own("functional.linear", TF.linear, F.linear, examples((6, 3), (4, 3), (4,)), {}, frozenset({"jvp"})),
    Own("functional.linear, no bias", TF.linear, F.linear, examples((6, 3), (4, 3)), {}, frozenset({"jvp"})),
    Own("functional.linear, 3-d input", TF.linear, F.linear, examples((2, 3, 4), (5, 4), (5,)), {}, frozenset({"jvp"})),
    Own("functional.sigmoid", TF.sigmoid, torch.sigmoid, examples((6, 3)), {}, ONE_INPUT),
    *[
        Own(
            f"functional.mse_loss, {reduction}",
            lambda a, b, r=reduction: TF.mse_loss(a, b, reduction=r),
            lambda a, b, r=reduction: F.mse_loss(a, b, reduction=r),
            examples((6, 3), (6, 3)),
            {},
            frozenset({"jvp"}),
        )
        for reduction in ("mean", "sum", "none")
    ],
    Own("functional.tanh", TF.tanh, torch.tanh, examples((6, 3)), {}, ONE_INPUT),
    Own("functional.relu", TF.relu, torch.relu, (examples((6, 3))[0] + 0.01,), {}, ONE_INPUT),
    Own("functional.gelu", TF.gelu, F.gelu, examples((6, 3)), {}, ONE_INPUT),
    Own(
        "functional.dropout, seeded",
        lambda z: (torch.manual_seed(0), TF.dropout(z, 0.5))[1],
        lambda z: (torch.manual_seed(0), F.dropout(z, 0.5))[1],
        examples((6, 3)),
        {"skip": ("vmap", "vmap-grad", "compile", "compile-dynamic", "non-contiguous")},  # why: tests/test_dropout.py
        ONE_INPUT,
    ),
    Own(
        "functional.embedding",
        TF.embedding,
        F.embedding,
        (torch.tensor([[1, 2, 2], [0, 4, 1], [3, 3, 3]]), examples((5, 4))[0]),
        {"batch_dims": (0, None)},
        frozenset({"jvp"}),
    ),
    Own(
        "functional.scaled_dot_product_attention, causal",
        lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        examples((3, 2, 4, 5), (3, 2, 4, 5), (3, 2, 4, 3)),
        {"batch_dims": (0, 0, 0)},
        frozenset({"jvp"}),
    ),
    Own("functional.softmax", lambda z: TF.softmax(z, -1), lambda z: F.softmax(z, -1), examples((6, 3)), {}, ONE_INPUT),
    Own(
        "functional.log_softmax",
        lambda z: TF.log_softmax(z, -1),
        lambda z: F.log_softmax(z, -1),
        examples((6, 3)),
        {},
        ONE_INPUT,
    ),
    Own(
        "functional.gelu, tanh",
        lambda z: TF.gelu(z, approximate="tanh"),
        lambda z: F.gelu(z, approximate="tanh"),
        examples((6, 3)),
        {},
        ONE_INPUT,
    ),
    Own(
        "functional.layer_norm",
        lambda x, w, b: TF.layer_norm(x, (4,), w, b),
        lambda x, w, b: F.layer_norm(x, (4,), w, b),
        examples((6, 4), (4,), (4,)),
        {},
        frozenset({"jvp"}),
    ),
    Own(
        "functional.layer_norm, no affine",
        lambda x: TF.layer_norm(x, (3, 4)),
        lambda x: F.layer_norm(x, (3, 4)),
        examples((5, 3, 4)),
        {},
        ONE_INPUT,
    ),
    Own(
        "functional.cross_entropy, class indices",
        TF.cross_entropy,
        F.cross_entropy,
        (*examples((6, 5)), torch.tensor([0, 4, 2, 2, 1, 3])),
        {},
        frozenset({"jvp"}),
    ),
    Own(
        "functional.cross_entropy, probabilities, smoothed",
        lambda z, q: TF.cross_entropy(z, q, label_smoothing=0.1),
        lambda z, q: F.cross_entropy(z, q, label_smoothing=0.1),
        (examples((6, 5))[0], torch.softmax(examples((6, 5))[0].flip(0), 1)),
        {},
        frozenset({"jvp"}),
    ),
    Own(
        "functional.conv2d",
        lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1),
        lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
        examples((3, 2, 5, 5), (4, 2, 3, 3), (4,)),
        {},
        frozenset({"jvp"}),
    ),
    Own(
        "fuse_loss, the derivation's network and cost",
        fused_cost(),
        derivation_cost,
        DERIVATION_INPUTS,
        DERIVATION_BATCH,
        frozenset({"jvp"}),
    ),
    # The bare chain Function takes no part in autocast: torchbp.nn.Sequential and FusedLoss fall back
    # to the per-layer path there, whose functional forms make autocast's casts (the row above).
    Own(
        "SequentialFunction, the derivation's network and cost",
        chain_function,
        derivation_cost,
        DERIVATION_INPUTS,
        dict(DERIVATION_BATCH, skip=("autocast",)),
        frozenset({"jvp"}),
    ),
]


@pytest.mark.parametrize("own", OWN, ids=[own.name for own in OWN])
def test_torchbps_own_functions_pass_every_property_that_applies(own):
    report = torchbp.verify(own.fn, own.reference, *own.inputs, **own.options, **FAST)
    report.assert_ok()
    assert {row.name for row in report.rows if row.status == NOT_APPLICABLE} == own.not_applicable | OPCHECK, report
    assert report["cuda"].status == (PASS if torch.cuda.is_available() else SKIPPED)


def test_forward_mode_is_not_applicable_for_the_reason_the_readme_gives():
    row = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), only=["jvp"])["jvp"]
    assert row.status == NOT_APPLICABLE and "defines no jvp" in row.measured


def test_the_default_compiler_traces_torchbps_linear_with_no_graph_break():
    row = torchbp.verify(TF.linear, F.linear, *examples((6, 3), (4, 3), (4,)), only=["compile"])["compile"]
    assert row.status == PASS and row.measured.startswith("inductor, no graph break")


def _wrong_where_the_batch_is_symbolic(graph, example_inputs):
    """A backward compiler whose code is 1 % off wherever a size is a symbol: what a backend's bug for symbolic
    sizes would give. Registered below as a compile backend."""
    symbolic = any(isinstance(x, torch.SymInt) for x in example_inputs)

    def run(args):
        return [out * 1.01 if symbolic and isinstance(out, torch.Tensor) else out for out in graph(*args)]

    run._boxed_call = True
    return run


torch._dynamo.register_backend(
    aot_autograd(
        fw_compiler=make_boxed_compiler(lambda graph, _: graph), bw_compiler=_wrong_where_the_batch_is_symbolic
    ),
    name="torchbp_test_wrong_where_symbolic",
)


def test_compile_dynamic_holds_the_compilation_with_a_symbolic_batch_to_eager():
    """Shown to fail on a wrong gradient: a backend 1 % off where the batch is a symbol passes compile (its
    sizes fixed) and fails compile-dynamic, naming the batch size and the gradients."""
    inputs = examples((6, 3), (4, 3), (4,))
    rows = ["compile", "compile-dynamic"]
    wrong = torchbp.verify(TF.linear, F.linear, *inputs, only=rows, compile_backend="torchbp_test_wrong_where_symbolic")
    assert wrong["compile"].status == PASS, str(wrong)
    row = wrong["compile-dynamic"]
    assert row.status == FAIL and row.measured.startswith("batch 6: inputs[0].grad: rel. error 1.0e-02"), row.measured
    assert "backend's code for symbolic sizes" in row.fix
    right = torchbp.verify(TF.linear, F.linear, *inputs, only=rows, **FAST)["compile-dynamic"]
    assert right.status == PASS and "batch 6 then 5, one graph for both" in right.measured, right.measured


def test_the_compile_row_fixes_the_sizes_whatever_verify_compiled_before():
    """The compiler learns which sizes change by the code's file, line and name, alike for each verify: without
    dynamic=False a second verify with another batch size would compile the compile row with a symbolic batch
    (which the backend above would get wrong)."""
    for n in (6, 5, 4):
        report = torchbp.verify(
            TF.linear, F.linear, *examples((n, 3), (4, 3), (4,)), only=["compile", "compile-dynamic"],
            compile_backend="torchbp_test_wrong_where_symbolic",
        )  # fmt: skip
        assert report["compile"].status == PASS, str(report)


class Square(torch.autograd.Function):
    """x², done right: the twin of the squares below."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class LoopsOverTheSamples(Square):
    """x², one sample at a time in a Python loop: right, but the compiler unrolls the loop for one batch size."""

    @staticmethod
    def forward(x):
        return torch.stack([x[n] * x[n] for n in range(x.shape[0])])


@pytest.mark.parametrize(
    ("fn", "shapes", "status", "words"),
    [
        (TF.linear, ((2, 3), (4, 3), (4,)), PASS, "batch 3 then 2"),  # the examples' samples over again
        (LoopsOverTheSamples.apply, ((6, 4),), PASS, "2 graphs: fn fixes the batch size"),
        (TF.linear, ((3,), (4, 3), (4,)), NOT_APPLICABLE, "no input has a batch dimension"),
        (TF.linear, ((0, 3), (4, 3), (4,)), NOT_APPLICABLE, "no samples"),
    ],
    ids=["two samples", "a size fixed by fn", "no batch", "an empty batch"],
)
def test_compile_dynamic_runs_two_batch_sizes_above_one_and_says_what_it_compiled(fn, shapes, status, words):
    reference = F.linear if fn is TF.linear else (lambda x: x * x)
    row = torchbp.verify(fn, reference, *examples(*shapes), only=["compile-dynamic"], **FAST)["compile-dynamic"]
    assert row.status == status and words in row.measured, row.measured


@pytest.fixture
def cuda_row_on_the_cpu(monkeypatch):
    """The cuda row's own logic, on the CPU (CI has no GPU): what it runs on its device, how a failure there
    reads. On a GPU the row runs these same checks there."""
    monkeypatch.setattr(torchbp.verification.settings, "GPU", "cpu")


def test_the_cuda_row_runs_the_transforms_and_the_compiler_on_the_device(cuda_row_on_the_cpu):
    row = torchbp.verify(TF.linear, F.linear, *examples((6, 3), (4, 3), (4,)), only=["cuda"], **FAST)["cuda"]
    assert row.status == PASS, row.measured
    assert row.measured.endswith("; vmap, vmap-grad, jacrev, compile, compile-dynamic on cpu as eagerly there")


@pytest.mark.parametrize(
    ("fn", "options", "measured", "fix"),
    [
        (TF.linear, {"compile_backend": "torchbp_test_wrong_where_symbolic"},
         "compile-dynamic on cpu: batch 6: inputs[0].grad: rel. error 1.0e-02", "backend's code for symbolic sizes"),
        (OldStyleSquare.apply, FAST, "vmap on cpu: OldStyleSquare is an old-style", "move the ctx work"),
    ],
    ids=["a gradient wrong there", "a Function torch.func does not take"],
)  # fmt: skip
def test_a_failure_on_the_device_fails_the_cuda_row_naming_where(cuda_row_on_the_cpu, fn, options, measured, fix):
    inputs = examples((6, 3), (4, 3), (4,)) if fn is TF.linear else positive()
    reference = F.linear if fn is TF.linear else (lambda x: x * x)
    row = torchbp.verify(fn, reference, *inputs, only=["cuda"], **options)["cuda"]
    assert row.status == FAIL and row.measured.startswith(measured) and fix in row.fix, (row.measured, row.fix)


def test_the_cuda_row_leaves_out_on_the_device_what_verify_was_told_to_skip(cuda_row_on_the_cpu):
    skip = ["vmap", "vmap-grad", "jacrev", "jvp"]
    row = torchbp.verify(OldStyleSquare.apply, lambda x: x * x, *positive(), only=["cuda"], skip=skip, **FAST)
    assert row["cuda"].status == PASS and row["cuda"].measured.endswith(
        "; compile, compile-dynamic on cpu as eagerly there"
    )


def test_the_bare_linear_function_leaves_autocast_to_the_functional_form():
    """Autocast does not reach into a custom Function: torchbp.functional.linear makes the casts (README)."""
    row = torchbp.verify(LinearFunction.apply, F.linear, *examples((6, 3), (4, 3), (4,)), only=["autocast"])
    assert row["autocast"].status == FAIL


# -- the report ---------------------------------------------------------------------------------


class WrongSigmoid(torch.autograd.Function):
    """σ' taken as σ: a wrong gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * a


def test_a_failing_report_is_false_and_names_the_failures_in_its_headline():
    report = torchbp.verify(WrongSigmoid.apply, torch.sigmoid, *examples((4, 3)), **FAST)
    assert not report.ok and not report
    # The second derivative runs through the same wrong backward (it reads the saved output), so it fails too.
    assert [row.name for row in report.failures] == ["float64", "float32", "gradcheck", "double-backward"]
    headline = str(report).splitlines()[0]
    assert headline.startswith("verify(WrongSigmoid.apply): FAIL in float64, float32, gradcheck, double-backward")


def test_a_failed_row_says_what_was_measured_and_the_usual_fix():
    row = torchbp.verify(WrongSigmoid.apply, torch.sigmoid, *examples((4, 3)), only=["float64"])["float64"]
    assert row.status == FAIL
    assert row.measured.startswith("inputs[0].grad: rel. error") and "> rtol 1e-07" in row.measured
    assert "formula" in row.fix
    assert f"↳ {row.fix}" in str(torchbp.verify(WrongSigmoid.apply, torch.sigmoid, *examples((4, 3)), only=["float64"]))


def test_assert_ok_raises_an_assertion_error_carrying_the_table():
    report = torchbp.verify(WrongSigmoid.apply, torch.sigmoid, *examples((4, 3)), only=["float64", "vmap"])
    with pytest.raises(AssertionError) as raised:
        report.assert_ok()
    assert str(raised.value) == str(report)
    assert "float64" in str(raised.value) and "vmap" in str(raised.value)


def test_a_passing_report_reads_ok_with_its_counts():
    report = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), **FAST)
    report.assert_ok()
    lines = str(report).splitlines()
    assert lines[0].startswith("verify(sigmoid): OK (") and "pass" in lines[0]
    assert lines[1] == "differentiating inputs[0]; batch along inputs[0] dim 0 (inferred; batch_dims= changes it)"
    assert lines[2].split() == ["property", "status", "measured"]
    assert [line.split()[0] for line in lines[3:]] == list(torchbp.VERIFY_PROPERTIES)


def test_rows_come_in_the_documented_order_and_can_be_read_by_name():
    report = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), **FAST)
    assert [row.name for row in report.rows] == list(torchbp.VERIFY_PROPERTIES)
    assert report.statuses()["float64"] == PASS
    with pytest.raises(KeyError, match="this report has"):
        report["nonsense"]


def test_a_property_that_raises_fails_with_the_error_as_its_measure():
    class Crashes(WrongSigmoid):
        @staticmethod
        def backward(ctx, g):
            raise ZeroDivisionError("the backward's own error")

    row = torchbp.verify(Crashes.apply, torch.sigmoid, *examples((4, 3)), only=["float64"])["float64"]
    assert row.status == FAIL and row.measured == "raised ZeroDivisionError: the backward's own error"


# -- options ------------------------------------------------------------------------------------


def test_without_a_reference_the_properties_needing_one_are_not_applicable_and_the_rest_run():
    report = torchbp.verify(TF.sigmoid, None, *examples((4, 3)), **FAST)
    report.assert_ok()
    statuses = report.statuses()
    assert {name for name, status in statuses.items() if status == NOT_APPLICABLE} == {
        "float64",
        "float32",
        "autocast",
        "memory",
        "needs-input-grad",
        "jvp",
        *OPCHECK,
    }
    assert statuses["gradcheck"] == statuses["vmap"] == statuses["compile"] == statuses["in-place"] == PASS


def test_without_a_reference_a_wrong_gradient_still_fails_gradcheck():
    report = torchbp.verify(WrongSigmoid.apply, None, *examples((4, 3)), **FAST)
    assert [row.name for row in report.failures] == ["gradcheck", "double-backward"]


def test_skip_reports_the_property_as_left_out_and_only_runs_just_those():
    skipped = torchbp.verify(
        WrongSigmoid.apply,
        torch.sigmoid,
        *examples((4, 3)),
        skip=["float64", "float32", "gradcheck", "double-backward"],
        **FAST,
    )
    assert skipped.ok
    assert skipped["float64"][:4] == ("float64", SKIPPED, "left out (skip=)", "")
    only = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), only=["vmap", "float64"])
    assert [row.name for row in only.rows] == ["float64", "vmap"]  # in the report's order


def test_once_differentiable_makes_double_backward_not_applicable():
    report = torchbp.verify(
        TF.sigmoid, torch.sigmoid, *examples((4, 3)), once_differentiable=True, only=["double-backward"]
    )
    assert report["double-backward"].status == NOT_APPLICABLE
    assert "once_differentiable=True" in report["double-backward"].measured


def test_a_backward_marked_once_differentiable_is_reported_not_applicable_not_failed():
    class Marked(WrongSigmoid):
        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return g * (1 - a) * a

    row = torchbp.verify(Marked.apply, torch.sigmoid, *examples((4, 3)), only=["double-backward"])
    assert row["double-backward"].status == NOT_APPLICABLE and "@once_differentiable" in row["double-backward"].measured


def test_no_batch_dimension_makes_the_batch_properties_not_applicable():
    report = torchbp.verify(
        TF.sigmoid,
        torch.sigmoid,
        *examples((4, 3)),
        batch_dims=[None],
        only=["empty-batch", "vmap", "vmap-grad", "float64"],
    )
    assert report.statuses() == {
        "float64": PASS,
        "empty-batch": NOT_APPLICABLE,
        "vmap": NOT_APPLICABLE,
        "vmap-grad": NOT_APPLICABLE,
    }
    assert "batch_dims" in report["vmap"].measured


def test_batch_dims_choose_the_batched_dimension():
    """A (features, batch) input batched along dimension 1: vmap's per-sample calls get 1-d columns."""
    (x,) = examples((3, 6))
    report = torchbp.verify(
        lambda t: TF.sigmoid(t).sum(0),
        lambda t: torch.sigmoid(t).sum(0),
        x,
        batch_dims=[1],
        only=["vmap", "vmap-grad", "empty-batch"],
    )
    report.assert_ok()
    assert report["vmap"].measured.startswith("4 samples")


def test_nondiff_inputs_get_no_gradient_and_the_backward_must_not_compute_one():
    x, target = examples((6, 3), (6, 3))
    report = torchbp.verify(TF.mse_loss, F.mse_loss, x, target, nondiff=[1], only=["float64", "needs-input-grad"])
    report.assert_ok()
    assert "over 2 tensors" in report["float64"].measured  # the loss and the input's gradient only


def test_inputs_asking_for_grad_choose_the_differentiable_ones():
    x, target = examples((6, 3), (6, 3))
    report = torchbp.verify(TF.mse_loss, F.mse_loss, x.requires_grad_(), target, only=["float64"])
    assert "over 2 tensors" in report["float64"].measured


def test_tolerances_apply_to_every_comparison():
    class Slightly(WrongSigmoid):
        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return g * (1 - a) * a * (1 + 1e-6)

    args = (Slightly.apply, torch.sigmoid, *examples((4, 3)))
    assert torchbp.verify(*args, only=["float64"])["float64"].status == FAIL
    assert torchbp.verify(*args, only=["float64"], rtol=1e-5)["float64"].status == PASS


def test_verify_leaves_the_example_inputs_alone():
    x, w, b = examples((6, 3), (4, 3), (4,))
    before = [t.clone() for t in (x, w, b)]
    torchbp.verify(TF.linear, F.linear, x, w, b, skip=["compile"])
    for t, original in zip((x, w, b), before):
        assert torch.equal(t, original) and t.grad is None and not t.requires_grad


def test_verify_runs_under_no_grad_all_the_same():
    with torch.no_grad():
        report = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), only=["float64", "gradcheck"])
    report.assert_ok()


@pytest.mark.parametrize("name", torchbp.VERIFY_PROPERTIES, ids=lambda name: f"{name} row")
def test_one_property_per_test_the_pytest_way(name):
    """The README's pattern: one pytest test per property, a failure shown as its row, one that does not apply
    shown as skipped."""
    row = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), only=name, **FAST)[name]
    if row.status in (NOT_APPLICABLE, SKIPPED):
        pytest.skip(row.measured)
    assert row.ok, row


# -- bad input ----------------------------------------------------------------------------------

BAD_INPUT = [
    (
        "a non-callable fn",
        (3, torch.sigmoid, torch.randn(2)),
        {},
        TypeError,
        r"verify: fn must be callable \(a function or MyFunction.apply\), got int",
    ),
    (
        "a non-callable reference",
        (torch.sigmoid, "sigmoid", torch.randn(2)),
        {},
        TypeError,
        "verify: reference must be callable or None, got str",
    ),
    (
        "no floating-point tensor",
        (torch.sigmoid, None, torch.arange(3), 2.0),
        {},
        ValueError,
        r"expected at least one floating-point tensor among the inputs, got Tensor\(torch.int64\), float",
    ),
    ("no inputs at all", (torch.sigmoid, None), {}, ValueError, "got no inputs"),
    (
        "a reference of another shape",
        (torch.sigmoid, lambda x: torch.sigmoid(x).T, torch.randn(2, 3)),
        {},
        ValueError,
        r"the reference's output has shape \(3, 2\) where fn's has \(2, 3\)",
    ),
    (
        "a reference with another number of outputs",
        (torch.sigmoid, lambda x: (x, x), torch.randn(2)),
        {},
        ValueError,
        r"the reference's output has shape \[\(2,\), \(2,\)\] where fn's has \(2,\)",
    ),
    (
        "an unknown property",
        (torch.sigmoid, None, torch.randn(2)),
        dict(only=["vmpa"]),
        ValueError,
        "no property named 'vmpa'; the properties are float64, float32",
    ),
    (
        "an unknown property to skip",
        (torch.sigmoid, None, torch.randn(2)),
        dict(skip=["speed"]),
        ValueError,
        "no property named 'speed'",
    ),
    (
        "batch_dims of the wrong length",
        (torch.sigmoid, None, torch.randn(2)),
        dict(batch_dims=[0, 0]),
        ValueError,
        "batch_dims has 2 entries for 1 inputs",
    ),
    (
        "a batch dimension out of range",
        (torch.sigmoid, None, torch.randn(2)),
        dict(batch_dims=[1]),
        ValueError,
        r"batch_dims\[0\] = 1, but inputs\[0\] is of shape \(2,\)",
    ),
    (
        "batch dimensions of different sizes",
        (torch.add, None, torch.randn(2), torch.randn(3)),
        dict(batch_dims=[0, 0]),
        ValueError,
        r"different sizes \[2, 3\]",
    ),
    (
        "every input nondiff",
        (torch.sigmoid, None, torch.randn(2)),
        dict(nondiff=[0]),
        ValueError,
        "no input left to differentiate",
    ),
    (
        "a nondiff position out of range",
        (torch.sigmoid, None, torch.randn(2)),
        dict(nondiff=[3]),
        ValueError,
        "nondiff position 3 is out of range for 1 inputs",
    ),
    ("an infinite tolerance", (torch.sigmoid, None, torch.randn(2)), dict(rtol=float("inf")), ValueError, "rtol"),
]


@pytest.mark.parametrize(
    "args, options, error, message", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_is_refused_with_a_one_line_error_naming_the_problem(args, options, error, message):
    with pytest.raises(error, match=message) as raised:
        torchbp.verify(*args, **options)
    assert "\n" not in str(raised.value)


# -- what a review of verify found ---------------------------------------------------------------


class MaxLast(torch.autograd.Function):
    """The largest element of each row and its index: an integer output beside a differentiable one."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.max(-1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx, g, _):
        (index,) = ctx.saved_tensors
        return torch.zeros(ctx.shape, dtype=g.dtype).scatter(-1, index[..., None], g[..., None])


def test_an_integer_output_beside_a_differentiable_one_is_verified():
    """Its values, gradients and compiled form pass; PyTorch's generated vmap rule refuses the integer output
    (its own assertion, reported as it is, not an error of verify's making)."""
    report = torchbp.verify(MaxLast.apply, lambda x: tuple(x.max(-1)), *examples((6, 4)), **FAST)
    assert {row.name for row in report.failures} == {"vmap", "vmap-grad"}, report
    assert all("flat_bdims must not be None" in row.measured for row in report.failures), report


def test_large_examples_take_gradchecks_fast_mode():
    report = torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((40, 20)), only=["gradcheck", "double-backward"])
    report.assert_ok()
    assert all(row.measured.endswith("(fast mode)") or "fast mode" in row.measured for row in report.rows), report


@pytest.mark.parametrize(
    "inputs, expected",
    [
        (examples((6, 4)), [0]),
        (examples((6,)), [None]),  # one vector, not six samples
        (examples((6, 4), (6, 4)), [0, 0]),  # an elementwise partner
        (examples((6, 4), (3, 4)), [0, None]),  # a weight
        ((*examples((6, 5)), torch.arange(6) % 5), [0, 0]),  # class labels
    ],
)
def test_the_default_batch_dimensions(inputs, expected):
    from torchbp.verification.subject import Subject

    subject = Subject(
        torch.add,
        None,
        inputs,
        batch_dims=None,
        nondiff=(),
        once_differentiable=False,
        rtol=None,
        atol=None,
        compile_backend="aot_eager",
        seed=0,
    )
    assert subject.batch_dims == expected


def test_the_report_says_which_inputs_were_differentiated_and_batched():
    x, w, b = examples((6, 3), (4, 3), (4,))
    report = torchbp.verify(TF.linear, F.linear, x, w, b, only=["float64"])
    assert str(report).splitlines()[1] == (
        "differentiating inputs[0], inputs[1], inputs[2]; batch along inputs[0] dim 0 "
        "(inferred; batch_dims= changes it)"
    )


def test_a_function_drawing_random_numbers_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"different outputs for the same inputs \(does it draw random numbers"):
        torchbp.verify(lambda x: F.dropout(x, 0.5), None, *examples((6, 4)))


def test_verify_leaves_the_global_random_state_and_compiled_functions_alone():
    compiled = torch.compile(lambda x: torch.sin(x) + 1, backend="aot_eager")
    compiled(torch.randn(3))
    state = torch.get_rng_state()
    torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    compiled(torch.randn(3))  # still compiled: no new graph
    assert counters["stats"]["unique_graphs"] == before


def test_verify_runs_under_inference_mode_all_the_same():
    with torch.inference_mode():
        torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), **FAST).assert_ok()


class Axpy(torch.autograd.Function):
    """a x + y, with a name among its arguments; the backward also returns a gradient for a."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, name, x, y):
        return a * x + y

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, _, x, _ = inputs
        ctx.save_for_backward(a, x)

    @staticmethod
    def backward(ctx, g):
        a, x = ctx.saved_tensors
        return (g * x).sum(), None, g * a, g


def test_a_gradient_no_input_asked_for_is_named_in_verifys_numbering():
    a, x, y = examples((), (6, 4), (6, 4))
    row = torchbp.verify(
        Axpy.apply,
        lambda a, name, x, y: a * x + y,
        a,
        "name",
        x,
        y,
        nondiff=[0],
        batch_dims=[None, None, 0, 0],
        only=["needs-input-grad"],
    )["needs-input-grad"]
    assert row.status == FAIL and "returned a gradient for inputs[0], which needs none" in row.measured


def test_a_forward_that_writes_into_its_input_fails_in_place():
    class ZeroesInput(WrongSigmoid):
        @staticmethod
        def forward(x):
            y = torch.sigmoid(x)
            x.zero_()
            return y

    row = torchbp.verify(ZeroesInput.apply, torch.sigmoid, *examples((4, 3)), only=["in-place"])["in-place"]
    assert row.status == FAIL and row.measured.startswith("fn's forward wrote into inputs[0]")


def test_memory_counts_tensors_kept_on_ctx_in_a_list():
    class KeepsAList(WrongSigmoid):
        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)
            ctx.cache = [inputs[0] * 1.0, torch.zeros(1000)]

    row = torchbp.verify(KeepsAList.apply, torch.sigmoid, *examples((4, 3)), only=["memory"])["memory"]
    assert row.status == FAIL and "more than 1.5×" in row.measured


def test_memory_allows_one_saved_tensor_the_size_of_an_output_and_says_so():
    row = torchbp.verify(cube, lambda x: x**3, *examples((6, 5)), only=["memory"])["memory"]
    assert row.status == PASS, row.measured
    assert row.measured.startswith("480 bytes saved where the reference saves 240: within 1.5× beside one tensor")
    strict = torchbp.verify(cube, lambda x: x**3, *examples((6, 5)), only=["memory"], memory_ratio=1.5)["memory"]
    assert strict.status == FAIL and strict.measured == (
        "480 bytes saved where the reference saves 240: more than the 1.5× asked"
    )


def test_memory_fails_a_saved_tensor_larger_than_any_input_or_output():
    class SavesOuterProducts(WrongSigmoid):  # (N, i, i) where the output, (N, i), would do
        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output, output[:, :, None] * output[:, None, :])

        @staticmethod
        def backward(ctx, g):
            y, _ = ctx.saved_tensors
            return g * y * (1 - y)

    row = torchbp.verify(SavesOuterProducts.apply, torch.sigmoid, *examples((4, 3)), only=["memory"])["memory"]
    assert row.status == FAIL and "more than 1.5×" in row.measured and "memory_ratio=" in row.measured


def test_memory_ratio_must_be_positive():
    with pytest.raises(ValueError, match="memory_ratio must be a positive number or None, got 0"):
        torchbp.verify(cube, lambda x: x**3, *examples((6, 5)), memory_ratio=0)


def test_a_view_output_that_pytorch_refuses_to_write_counts_as_refused():
    row = torchbp.verify(FirstTwoColumns.apply, lambda x: x[..., :2], *examples((4, 5)), only=["in-place"])["in-place"]
    assert (
        row.status == PASS
        and row.measured == "2 tensors written after the forward: 2 refused, 0 not read by the backward"
    )


def test_an_index_tensor_of_another_shape_is_batched_with_the_input_whose_first_size_it_shares():
    report = torchbp.verify(SortValues.apply, lambda x, order: x.gather(-1, order), *sort_inputs(), **FAST)
    assert str(report).splitlines()[1] == (
        "differentiating inputs[0]; batch along inputs[0] dim 0, inputs[1] dim 0 (inferred; batch_dims= changes it)"
    )
    report.assert_ok()  # empty-batch and the transforms narrow both


def test_the_header_and_the_rows_say_where_no_batch_came_from():
    (vector,) = examples((4,))
    inferred = torchbp.verify(torch.sigmoid, torch.sigmoid, vector, only=["empty-batch"])
    reason = "inferred: the first floating-point input has fewer than 2 dimensions; batch_dims= gives one"
    assert str(inferred).splitlines()[1] == f"differentiating inputs[0]; batch along none ({reason})"
    assert inferred["empty-batch"].measured == f"no input has a batch dimension ({reason})"
    given = torchbp.verify(torch.sigmoid, torch.sigmoid, vector, batch_dims=[None], only=["empty-batch"])
    assert str(given).splitlines()[1] == "differentiating inputs[0]; batch along none (as batch_dims gives)"


def test_the_recipe_for_a_backward_that_is_not_the_derivative_catches_a_wrong_one():
    class ReversalThatForgetsTheSign(GradientReversal):
        @staticmethod
        def backward(ctx, g):
            return g  # −g was meant

    report = torchbp.verify(
        ReversalThatForgetsTheSign.apply, lambda x: 2 * x.detach() - x, *examples((8, 3)), skip=["gradcheck"], **FAST
    )
    assert {"float64", "float32"} <= {row.name for row in report.rows if row.status == FAIL}


class WritesIntoItsGradient(Square):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.mul_(2 * x)


# name: (fn, reference, inputs, the row, words of what it measured, words of the fix it gives)
READ_FROM_THE_ERROR = {
    "ctx.saved_variables": (
        SavedVariablesSquare.apply, lambda x: x * x, positive(), "compile", "graph break", "use ctx.saved_tensors"
    ),
    "classmethods": (
        ClassMethodSquare.apply, lambda x: x * x, positive(), "compile", "graph break", "@staticmethod"
    ),
    "NaN second derivatives": (
        SquareRoot.apply, torch.sqrt, with_a_zero(), "double-backward", "NaN or infinite", "singular point"
    ),
    "a backward that writes into g": (
        WritesIntoItsGradient.apply, lambda x: x * x, positive(), "double-backward", "in-place operation",
        "writes into its upstream gradient g",
    ),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated")  # the case's own old name
@pytest.mark.parametrize("case", READ_FROM_THE_ERROR)
def test_a_failures_fix_is_read_from_what_was_observed(case):
    fn, reference, inputs, name, measured, fix = READ_FROM_THE_ERROR[case]
    row = torchbp.verify(fn, reference, *inputs, only=[name], **FAST)[name]
    assert row.status == FAIL and measured in row.measured, row.measured
    assert fix in row.fix, row.fix


def test_a_graph_break_says_where_it_happened():
    class Branches(WrongSigmoid):
        @staticmethod
        def forward(x):
            return torch.sigmoid(x) if x.sum() > 0 else torch.sigmoid(-x)

    row = torchbp.verify(Branches.apply, None, *examples((4, 3)), only=["compile"], **FAST)["compile"]
    assert row.status == FAIL and row.measured.startswith("graph break:") and "test_verify.py" in row.measured


MORE_BAD_INPUT = [
    ("only=[]", dict(only=[]), ValueError, "only= names no property"),
    (
        "batch_dims an int",
        dict(batch_dims=0),
        TypeError,
        "batch_dims must be a sequence of an int or None each, got int",
    ),
    ("batch_dims of floats", dict(batch_dims=(0.0,)), TypeError, "batch_dims must hold an int or None each, got 0.0"),
    ("nondiff an int", dict(nondiff=1), TypeError, "nondiff must be a sequence of an int each, got int"),
    ("seed a float", dict(seed=0.5), TypeError, "seed must be an int, got float"),
]


@pytest.mark.parametrize(
    "options, error, message", [case[1:] for case in MORE_BAD_INPUT], ids=[case[0] for case in MORE_BAD_INPUT]
)
def test_bad_options_are_refused_naming_the_option(options, error, message):
    with pytest.raises(error, match=message):
        torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), **options)


def test_a_reference_that_raises_on_float64_copies_is_refused_with_the_reason():
    weight = torch.randn(3, 3)  # float32, closed over: the reference cannot take float64 inputs
    with pytest.raises(ValueError, match="the reference raised on float64 copies of the inputs"):
        torchbp.verify(lambda x: TF.linear(x, weight.double()), lambda x: F.linear(x, weight), *examples((4, 3)))


def test_one_property_may_be_named_alone():
    assert [row.name for row in torchbp.verify(TF.sigmoid, torch.sigmoid, *examples((4, 3)), only="vmap").rows] == [
        "vmap"
    ]
