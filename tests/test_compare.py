"""The comparison API: what a report holds, and that it catches each planted bug."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import torchbp
from torchbp.check import check_function, check_model
from torchbp.compare import DEFAULT_RTOL, ComparedTensor, Report, compare_many, compare_tensors, settle
from torchbp.functions import LinearFunction, MSELossFunction, SigmoidFunction


def leaf(*shape, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype).requires_grad_()


# Planted bugs: each is the real Function with one mistake in its backward.
class TransposedWeightGradient(LinearFunction):
    @staticmethod
    def backward(ctx, delta):
        grad_a_prev, grad_W, grad_b = LinearFunction.backward(ctx, delta)
        return grad_a_prev, grad_W.T, grad_b  # δᵀ a_prev transposed: on a square W only the values are wrong


class MissingSigmoidDerivative(SigmoidFunction):
    @staticmethod
    def backward(ctx, grad_output):
        return grad_output  # forgot ⊙ σ'(z)


class SumScaleForMean(MSELossFunction):
    @staticmethod
    def backward(ctx, g):
        y_hat, y = ctx.saved_tensors
        return 2 * (y_hat - y) * g, None, None  # forgot the 1/N of "mean"


class MissingFactorTwo(MSELossFunction):
    @staticmethod
    def backward(ctx, g):
        y_hat, y = ctx.saved_tensors
        return (y_hat - y) * g / y_hat.numel(), None, None  # ∂(mean of squares)/∂ŷ lost its 2


class BiasSumOverPartOfTheBatch(LinearFunction):
    @staticmethod
    def backward(ctx, delta):
        grad_a_prev, grad_W, _ = LinearFunction.backward(ctx, delta)
        return grad_a_prev, grad_W, delta.sum(0)[0]  # for (B, T, o) sums over B but takes t = 0 only


PLANTED_BUGS = {
    "transposed weight gradient": dict(
        fn=TransposedWeightGradient.apply,
        reference=F.linear,
        inputs=lambda: (leaf(5, 3), leaf(3, 3), leaf(3)),
        wrong="inputs[1].grad",
    ),
    "missing sigmoid derivative": dict(
        fn=MissingSigmoidDerivative.apply,
        reference=torch.sigmoid,
        inputs=lambda: (leaf(5, 3),),
        wrong="inputs[0].grad",
    ),
    "wrong reduction scale": dict(
        fn=lambda x, y: SumScaleForMean.apply(x, y, "mean"),
        reference=F.mse_loss,
        inputs=lambda: (leaf(5, 3), torch.randn(5, 3, dtype=torch.float64)),
        wrong="inputs[0].grad",
    ),
    "bias gradient summed over part of the leading dimensions": dict(
        fn=BiasSumOverPartOfTheBatch.apply,
        reference=F.linear,
        inputs=lambda: (leaf(2, 4, 3), leaf(5, 3), leaf(5)),
        wrong="inputs[2].grad",
    ),
}


@pytest.mark.parametrize("bug", PLANTED_BUGS)
def test_report_catches_planted_bug(bug):
    case = PLANTED_BUGS[bug]
    report = check_function(case["fn"], case["reference"], *case["inputs"]())
    assert not report.ok
    assert [row.name for row in report.mismatches] == [case["wrong"]]
    assert "MISMATCH" in str(report) and case["wrong"] in str(report)


def test_the_transposed_weight_gradient_has_the_right_shape_and_wrong_values():
    # Guards the planted bug itself: a shape error would be caught by autograd, not by us.
    x, w = leaf(5, 3), leaf(3, 3)
    (grad,) = torch.autograd.grad(TransposedWeightGradient.apply(x, w, None).sum(), w)
    (native,) = torch.autograd.grad(F.linear(x, w).sum(), w)
    assert grad.shape == w.shape and not torch.allclose(grad, native)


def test_a_50_percent_wrong_tiny_gradient_fails_where_a_fixed_atol_passes_it():
    # A mean over 100 000 elements makes every gradient about 1e-5; losing the
    # factor 2 halves them, an error of about 5e-6: under torch.testing's atol.
    torch.manual_seed(0)
    y_hat = torch.randn(100_000, requires_grad=True)
    y = y_hat.detach() + torch.rand(100_000) * 0.5
    ours = torch.autograd.grad(MissingFactorTwo.apply(y_hat, y, "mean"), y_hat)[0]
    native = torch.autograd.grad(F.mse_loss(y_hat, y), y_hat)[0]
    torch.testing.assert_close(ours, native)  # the trap: a fixed absolute floor passes it
    report = check_function(lambda a, b: MissingFactorTwo.apply(a, b, "mean"), F.mse_loss, y_hat, y)
    assert [row.name for row in report.mismatches] == ["inputs[0].grad"]
    assert report.rows[1].max_rel_error == pytest.approx(0.5, rel=1e-3)


def test_correct_functions_pass_with_every_row_listed():
    report = check_function(torchbp.functional.linear, F.linear, leaf(5, 3), leaf(4, 3), leaf(4))
    assert report.ok and bool(report)
    assert [row.name for row in report.rows] == ["output", "inputs[0].grad", "inputs[1].grad", "inputs[2].grad"]
    report.assert_ok()


def test_inputs_without_requires_grad_are_not_compared():
    report = check_function(torchbp.functional.linear, F.linear, torch.randn(5, 3), leaf(4, 3).float())
    assert [row.name for row in report.rows] == ["output", "inputs[1].grad"]


def test_with_no_input_requiring_grad_every_floating_input_is_differentiated():
    report = check_function(MissingSigmoidDerivative.apply, torch.sigmoid, torch.randn(5, 3, dtype=torch.float64))
    assert [row.name for row in report.mismatches] == ["inputs[0].grad"]


def test_assert_ok_raises_with_the_table():
    report = check_function(MissingSigmoidDerivative.apply, torch.sigmoid, leaf(5, 3))
    with pytest.raises(AssertionError) as raised:
        report.assert_ok()
    assert str(report) == str(raised.value)
    assert "max abs err" in str(raised.value) and "inputs[0].grad" in str(raised.value)


def test_a_report_is_false_when_it_mismatches():
    assert not check_function(MissingSigmoidDerivative.apply, torch.sigmoid, leaf(5, 3))


def test_report_row_fields():
    reference = torch.tensor([1.0, -4.0], dtype=torch.float64)
    row = compare_tensors("t", reference + torch.tensor([0.0, 1e-3], dtype=torch.float64), reference)
    assert row.shape == (2,) and row.dtype == torch.float64
    assert row.max_abs_error == pytest.approx(1e-3)
    assert row.max_rel_error == pytest.approx(1e-3 / 4)
    assert row.reference_max == 4.0
    assert row.tolerance == pytest.approx(DEFAULT_RTOL[torch.float64] * 4)
    assert not row.ok and "index (1,)" in row.note


TOLERANCE_CASES = [
    # (dtype, relative error, passes)
    (torch.float64, 1e-9, True),
    (torch.float64, 1e-6, False),
    (torch.float32, 1e-6, True),
    (torch.float32, 1e-4, False),
    (torch.float16, 1e-3, True),
    (torch.float16, 1e-1, False),
    (torch.bfloat16, 1e-2, True),
    (torch.bfloat16, 2e-1, False),
]


@pytest.mark.parametrize("dtype, relative_error, passes", TOLERANCE_CASES, ids=str)
def test_tolerance_follows_dtype_and_reference_magnitude(dtype, relative_error, passes):
    # The verdict does not depend on the gradients' scale (within the dtype's range).
    scales = (1e-2, 1.0, 1e2) if dtype == torch.float16 else (1e-8, 1.0, 1e6)
    for scale in scales:
        reference = torch.linspace(-1, 1, 101, dtype=torch.float64) * scale
        actual = reference + relative_error * scale
        row = compare_tensors("t", actual.to(dtype), reference.to(dtype))
        assert row.ok is passes, (scale, row)


def test_explicit_tolerances_override_the_defaults():
    reference = torch.ones(3)
    assert compare_tensors("t", reference * 1.01, reference, rtol=0.02).ok
    assert compare_tensors("t", reference + 0.5, reference, rtol=0.0, atol=1.0).ok
    assert not compare_tensors("t", reference * 1.01, reference, rtol=0.0, atol=1e-3).ok


# (actual, reference, rtol, atol): the largest error as a fraction of its tolerance, for a report of one row
SHARE_CASES = {
    "equal bits": ([1.0, -2.0], [1.0, -2.0], None, None, 0.0),
    "half the tolerance": ([1.0, 2.5], [1.0, 2.0], 0.5, 0.0, 0.5),
    "at the limit": ([1.0, 3.0], [1.0, 2.0], 0.5, 0.0, 1.0),
    "twice the limit": ([1.0, 4.0], [1.0, 2.0], 0.5, 0.0, 2.0),
    "atol alone": ([0.25, 0.0], [0.0, 0.0], 0.0, 1.0, 0.25),
    "an error against zeros with no atol": ([0.25, 0.0], [0.0, 0.0], None, None, math.inf),
    "NaN in another place, values equal": ([float("nan"), 2.0], [1.0, 2.0], None, None, math.inf),
}


@pytest.mark.parametrize("case", SHARE_CASES)
def test_the_share_of_tolerance_is_0_when_equal_1_at_the_limit_and_above_1_exactly_when_the_check_fails(case):
    actual, reference, rtol, atol, share = SHARE_CASES[case]
    actual, reference = torch.tensor(actual, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    settled = Report("r", settle([("t", actual, reference)], rtol, atol))  # the common case, rows left unbuilt
    for report in (settled, Report("r", [compare_tensors("t", actual, reference, rtol, atol)])):
        assert report.max_share_of_tolerance() == pytest.approx(share)
        assert report.ok is (report.max_share_of_tolerance() <= 1)


def test_the_share_of_tolerance_of_a_report_is_its_worst_rows_and_nan_where_one_could_not_be_measured():
    one, two = torch.ones(2, dtype=torch.float64), torch.full((2,), 2.0, dtype=torch.float64)
    rows = [compare_tensors("a", one * 1.25, one, rtol=1.0), compare_tensors("b", two * 1.5, two, rtol=1.0)]
    assert Report("r", rows).max_share_of_tolerance() == pytest.approx(0.5)
    shapes = compare_tensors("c", torch.ones(3), torch.ones(2))  # another shape: fails, however small
    assert Report("r", [*rows, shapes]).max_share_of_tolerance() == math.inf
    unmeasured = ComparedTensor("elsewhere", None, None, math.nan, math.nan, 0.0, 0.0, False)  # e.g. another process's
    assert math.isnan(Report("r", [*rows, unmeasured]).max_share_of_tolerance())


NONFINITE_CASES = {
    "NaN in the same place": ([float("nan"), 1.0], [float("nan"), 1.0], True),
    "NaN only in actual": ([float("nan"), 1.0], [0.0, 1.0], False),
    "NaN only in reference": ([0.0, 1.0], [float("nan"), 1.0], False),
    "same infinities": ([float("inf"), 1.0], [float("inf"), 1.0], True),
    "opposite infinities": ([float("-inf"), 1.0], [float("inf"), 1.0], False),
}


@pytest.mark.parametrize("case", NONFINITE_CASES)
def test_nan_and_inf_must_sit_in_the_same_places(case):
    actual, reference, passes = NONFINITE_CASES[case]
    assert compare_tensors("t", torch.tensor(actual), torch.tensor(reference)).ok is passes


MISMATCHED_METADATA = {
    "shape": (torch.zeros(2, 3), torch.zeros(3, 2), "shape"),
    "dtype": (torch.zeros(2), torch.zeros(2, dtype=torch.float64), "dtype"),
    "missing on the torchbp side": (None, torch.zeros(2), "torchbp side"),
    "missing on the reference side": (torch.zeros(2), None, "reference side"),
    "device": (torch.zeros(2), torch.zeros(2, device="meta"), "device"),
}


@pytest.mark.parametrize("case", MISMATCHED_METADATA)
def test_metadata_mismatch_fails_with_a_note(case):
    actual, reference, note = MISMATCHED_METADATA[case]
    row = compare_tensors("t", actual, reference)
    assert not row.ok and note in row.note


EXACT_KINDS = {
    "complex, imaginary part differs": (torch.tensor([1 + 1j]), torch.tensor([1 + 5j]), False),
    "complex, equal": (torch.tensor([1 + 1j]), torch.tensor([1 + 1j]), True),
    "int64 beyond float64's integers": (torch.tensor([2**53 + 1]), torch.tensor([2**53]), False),
    "int64, equal": (torch.tensor([2**60]), torch.tensor([2**60]), True),
    "bool": (torch.tensor([True, False]), torch.tensor([True, True]), False),
}


@pytest.mark.parametrize("case", EXACT_KINDS)
def test_complex_and_integer_tensors_are_not_rounded_into_a_match(case):
    actual, reference, passes = EXACT_KINDS[case]
    assert compare_tensors("t", actual, reference).ok is passes


def test_empty_tensors_match():
    assert compare_tensors("t", torch.zeros(0, 3), torch.zeros(0, 3)).ok


def test_check_function_leaves_the_callers_inputs_alone():
    x = leaf(5, 3)
    before = x.detach().clone()
    check_function(torchbp.functional.sigmoid, torch.sigmoid, x)
    assert x.grad is None and torch.equal(x, before)


def test_check_function_keeps_non_contiguous_inputs_non_contiguous():
    seen = []
    x = leaf(6, 4).detach()[:, ::2].requires_grad_()
    check_function(lambda t: seen.append(t.is_contiguous()) or torch.sigmoid(t), torch.sigmoid, x)
    assert seen == [False]


def test_check_function_compares_every_output_of_a_tuple():
    report = check_function(lambda x: (x * 2, x + 1), lambda x: (x * 2, x + 2), leaf(3))
    assert [row.name for row in report.mismatches] == ["output[1]"]


def test_check_function_uses_the_given_upstream_gradient():
    seen = {}

    def spy(x):
        out = x * 1.0
        out.register_hook(lambda g: seen.setdefault("g", g))
        return out

    grad_output = torch.arange(3.0, dtype=torch.float64)
    check_function(spy, lambda x: x * 1.0, leaf(3), grad_output=grad_output)
    assert torch.equal(seen["g"], grad_output)


def network(bias=True):
    return torch.nn.Sequential(
        torch.nn.Linear(2, 3, bias=bias), torch.nn.Sigmoid(), torch.nn.Linear(3, 1, bias=bias), torch.nn.Sigmoid()
    ).double()


@pytest.mark.parametrize("given_as", ["native", "torchbp"])
def test_check_model_compares_output_loss_input_and_every_parameter(given_as):
    model = network() if given_as == "native" else torchbp.convert(network())
    report = check_model(
        model, torch.nn.MSELoss(), torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    )
    assert report.ok, str(report)
    names = [row.name for row in report.rows]
    assert names == ["output", "loss", "input.grad", "0.weight.grad", "0.bias.grad", "2.weight.grad", "2.bias.grad"]


def test_check_model_catches_a_planted_bug_in_a_layer(monkeypatch):
    monkeypatch.setattr(SigmoidFunction, "backward", MissingSigmoidDerivative.backward)
    report = check_model(
        network(), torch.nn.MSELoss(), torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    )
    assert not report.ok
    assert {row.name for row in report.mismatches} == {
        "input.grad",
        "0.weight.grad",
        "0.bias.grad",
        "2.weight.grad",
        "2.bias.grad",
    }


def test_check_model_catches_a_planted_bug_in_the_loss(monkeypatch):
    monkeypatch.setattr(MSELossFunction, "backward", SumScaleForMean.backward)
    report = check_model(
        network(), torch.nn.MSELoss(), torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    )
    assert "loss" not in {row.name for row in report.mismatches}
    assert "2.weight.grad" in {row.name for row in report.mismatches}


def test_check_model_leaves_the_model_alone():
    model = network()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model(
        model, torch.nn.MSELoss(), torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    )
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_model_skips_frozen_parameters():
    model = network()
    model[0].weight.requires_grad_(False)
    report = check_model(
        model, torch.nn.MSELoss(), torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    )
    assert report.ok and "0.weight.grad" not in [row.name for row in report.rows]


def test_check_model_refuses_a_model_torchbp_would_not_change():
    with pytest.raises(ValueError, match="no layer that torchbp replaces"):
        check_model(torch.nn.Sequential(torch.nn.ELU()), lambda out, y: (out - y).sum(), torch.randn(3), torch.randn(3))


def test_check_model_gives_both_sides_the_same_dropout_mask():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)).double()
    report = check_model(
        model, torch.nn.MSELoss(), torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    )
    assert report.ok, str(report)


def test_check_model_accepts_a_plain_loss_function():
    half_sse = lambda out, y: 0.5 * ((out - y) ** 2).sum()  # noqa: E731
    report = check_model(
        network(bias=False), half_sse, torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    )
    assert report.ok, str(report)


# compare_many decides the common case in a few tensor operations; its rows must be
# exactly those of compare_tensors, pair by pair, whatever the pairs hold.
MANY_CASES = {
    **{f"non-finite: {k}": (torch.tensor(a), torch.tensor(r)) for k, (a, r, _) in NONFINITE_CASES.items()},
    **{f"metadata: {k}": (a, r) for k, (a, r, _) in MISMATCHED_METADATA.items()},
    **{f"exact kinds: {k}": (a, r) for k, (a, r, _) in EXACT_KINDS.items()},
    "empty": (torch.zeros(0, 3), torch.zeros(0, 3)),
    "absent on both sides": (None, None),
    "bit-identical float32": (torch.linspace(-1, 1, 7), torch.linspace(-1, 1, 7)),
    "within float32 tolerance": (torch.ones(3) * (1 + 1e-6), torch.ones(3)),
    "outside float32 tolerance": (torch.ones(3) * (1 + 1e-4), torch.ones(3)),
    "all-zero reference, zero actual": (torch.zeros(4), torch.zeros(4)),
    "all-zero reference, tiny actual": (torch.full((4,), 1e-30), torch.zeros(4)),
    "float64 scalar": (torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.5 + 1e-12, dtype=torch.float64)),
    "float16": (torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([1.0, 2.001], dtype=torch.float16)),
    "bfloat16": (torch.tensor([1.0, 2.0], dtype=torch.bfloat16), torch.tensor([1.0, 2.5], dtype=torch.bfloat16)),
    "complex, close": (torch.tensor([1 + 1j]), torch.tensor([1 + (1 + 1e-7) * 1j])),
    "float64 overflow in the difference": (
        torch.tensor([1.7e308], dtype=torch.float64),
        torch.tensor([-1.7e308], dtype=torch.float64),
    ),
    "non-contiguous": (torch.randn(4, 3).T, torch.randn(4, 3).T),
}


@pytest.fixture(params=["torch.equal", "differences on the device"])
def equal_bits_found_by(request, monkeypatch):
    """compare_many finds equal bits with torch.equal on the CPU and by differences on a GPU: test both here."""
    if request.param == "differences on the device":
        monkeypatch.setattr(torchbp.compare, "READING_A_BOOLEAN_IS_FREE", set())
    return request.param


@pytest.mark.parametrize("tolerances", [dict(), dict(rtol=0.0, atol=1e-3), dict(rtol=1e-2)])
def test_compare_many_gives_the_rows_compare_tensors_gives(tolerances, equal_bits_found_by):
    pairs = [(name, actual, reference) for name, (actual, reference) in MANY_CASES.items()]
    expected = [compare_tensors(name, actual, reference, **tolerances) for name, actual, reference in pairs]
    assert compare_many(pairs, **tolerances) == expected


@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
    relative_error=st.sampled_from([0.0, 1e-9, 1e-6, 1e-4, 1e-2, 1.0]),
    nonfinite=st.sampled_from([None, "nan", "inf"]),
)
@pytest.mark.parametrize("on_the_cpu", [True, False], ids=["torch.equal", "differences on the device"])
def test_compare_many_agrees_with_compare_tensors_on_any_shape(shape, dtype, relative_error, nonfinite, on_the_cpu):
    reference = torch.randn(shape, dtype=torch.float64)
    actual = reference * (1 + relative_error * torch.randn(shape, dtype=torch.float64))
    if nonfinite is not None and actual.numel():
        actual.view(-1)[0] = float(nonfinite)
    pair = ("t", actual.to(dtype), reference.to(dtype))
    with mock.patch.object(torchbp.compare, "READING_A_BOOLEAN_IS_FREE", {"cpu"} if on_the_cpu else set()):
        assert compare_many([pair]) == [compare_tensors(*pair)]


def test_compare_many_decides_pairs_within_tolerance_without_the_detailed_analysis(monkeypatch, equal_bits_found_by):
    def detailed(*args, **kwargs):
        raise AssertionError("the common case took the detailed path")

    monkeypatch.setattr(torchbp.compare, "compare_tensors", detailed)
    pairs = [(f"t{i}", torch.randn(3, 2) * i, None) for i in range(4)]
    pairs = [(name, actual, actual.clone()) for name, actual, _ in pairs]
    assert all(row.ok and row.verdict == "exact" for row in compare_many(pairs))


def test_compare_many_explains_a_mismatch_as_compare_tensors_does():
    reference = torch.zeros(2, 3)
    actual = reference.clone()
    actual[1, 2] = 1.0
    (row,) = compare_many([("t", actual, reference)])
    assert not row.ok and row.note == "largest error 1.000e+00 at index (1, 2)"


def test_deferred_equal_pairs_give_the_eager_rows_while_their_tensors_live():
    pairs = [(f"t{i}", torch.randn(3, 2) * i, None) for i in range(3)]
    pairs = [(name, actual, actual.clone()) for name, actual, _ in pairs] + [("off", torch.ones(2), torch.zeros(2))]
    deferred = torchbp.compare.Report("r", torchbp.compare.settle(pairs, defer_equal=True))
    assert deferred.ok is False and deferred.max_rel_error("") == math.inf
    assert deferred.rows == compare_many(pairs)


@pytest.mark.parametrize("how", ["freed", "changed in place"])
def test_a_deferred_row_whose_reference_is_gone_says_so_instead_of_showing_another_figure(how):
    actual = torch.tensor([1.0, -2.0])
    reference = actual.clone()
    report = torchbp.compare.Report("r", torchbp.compare.settle([("t", actual, reference)], defer_equal=True))
    if how == "freed":
        del reference
    else:
        reference.mul_(10)
    (row,) = report.rows
    assert row.ok and row.verdict == "exact" and math.isnan(row.reference_max)
    assert "freed or changed" in row.note


def test_check_model_names_what_it_replaced_and_what_it_left_native():
    report = check_model(torch.nn.Sequential(torch.nn.ELU()), torch.nn.MSELoss(), torch.randn(3, 2), torch.randn(3, 2))
    assert report.ok and str(report).splitlines()[1] == "hand-derived: loss MSELoss; native: 0 ELU"


def test_check_function_names_the_function_whose_apply_it_checked():
    report = check_function(SigmoidFunction.apply, torch.sigmoid, leaf(3))
    assert report.title == "check_function(SigmoidFunction.apply)"


@pytest.mark.parametrize("tolerances", [dict(rtol=-1.0), dict(atol=math.inf), dict(rtol=math.nan), dict(atol="1e-3")])
def test_a_tolerance_must_be_a_finite_number_of_at_least_zero(tolerances):
    pair = ("t", torch.tensor([1.0, 2.0, math.inf]), torch.tensor([1.0, 2.0, 3.0]))
    for compare in (lambda: compare_tensors(*pair, **tolerances), lambda: compare_many([pair], **tolerances)):
        with pytest.raises(ValueError, match="finite number of at least 0"):
            compare()


ODD_KINDS = {
    "float8": lambda: (
        torch.tensor([1.0, 2.0]).to(torch.float8_e4m3fn),
        torch.tensor([1.0, 2.0]).to(torch.float8_e4m3fn),
    ),
    "a conjugate view": lambda: (torch.tensor([1 + 2j]).conj(), torch.tensor([1 - 2j])),
    "complex within its default tolerance": lambda: (torch.tensor([1 + 1j]) * (1 + 1e-7), torch.tensor([1 + 1j])),
}


@pytest.mark.parametrize("case", ODD_KINDS)
def test_compare_many_takes_what_compare_tensors_takes(case):
    pair = ("t", *ODD_KINDS[case]())
    assert compare_many([pair]) == [compare_tensors(*pair)] and compare_tensors(*pair).ok


NON_TENSOR_OUTPUTS = [  # (what fn returns besides its tensor, what the reference returns, do they match)
    (3, 3, True),
    (3, 4, False),
    (3, 3.0, False),  # another type is another value
    ("mean", "mean", True),
    (None, None, True),
]


@pytest.mark.parametrize("mine, theirs, match", NON_TENSOR_OUTPUTS)
def test_an_output_that_is_no_tensor_is_compared_with_equals(mine, theirs, match):
    report = check_function(lambda x: (2 * x, mine), lambda x: (2 * x, theirs), torch.randn(3, dtype=torch.float64))
    assert report.ok is match, str(report)
    assert report.rows[0].ok and report.rows[2].ok  # the tensor output and the gradient
