"""MaxPool2d, AvgPool2d and AdaptiveAvgPool2d against native autograd: every option, ties, any shape, the empty
batch, every dtype, finite differences, verify, planted bugs, bad input, and the modules in a model."""

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import torchbp
import torchbp.functional as TF
import torchbp.layers.adaptive_avg_pool2d as adaptive_module
import torchbp.layers.avg_pool2d as avg_module
import torchbp.layers.max_pool2d as max_module
from torchbp.check import check_function
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES
from torchbp.verification.report import NOT_APPLICABLE

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


class Case(NamedTuple):
    layer: str  # "max", "avg" or "adaptive"
    input: tuple[int, ...]
    options: dict
    values: str = "normal"  # or "equal" (every window a tie), "integers" (ties here and there)


FUNCTIONS = {  # layer: (torchbp's functional form, native's)
    "max": (TF.max_pool2d, F.max_pool2d),
    "avg": (TF.avg_pool2d, F.avg_pool2d),
    "adaptive": (TF.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
}

CASES = {
    "max 2×2, stride 2": Case("max", (3, 2, 6, 6), dict(kernel_size=2)),
    "max 3×3, stride 2, padding 1: overlapping windows": Case(
        "max", (2, 3, 7, 7), dict(kernel_size=3, stride=2, padding=1)
    ),
    "max, every window a tie": Case("max", (2, 2, 6, 5), dict(kernel_size=3, stride=1, padding=1), "equal"),
    "max, integer values: ties here and there": Case(
        "max", (3, 2, 7, 8), dict(kernel_size=(3, 2), stride=(1, 2)), "integers"
    ),
    "max, dilation and ceil_mode": Case(
        "max", (2, 2, 9, 8), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(2, 3), ceil_mode=True)
    ),
    "max, ceil_mode with ties": Case("max", (2, 2, 5, 5), dict(kernel_size=2, ceil_mode=True), "integers"),
    "max, return_indices": Case("max", (2, 2, 6, 6), dict(kernel_size=3, stride=2, return_indices=True), "integers"),
    "max, unbatched (C, H, W)": Case("max", (3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    "max, empty batch": Case("max", (0, 2, 6, 6), dict(kernel_size=2)),
    "avg 2×2, stride 2": Case("avg", (3, 2, 6, 6), dict(kernel_size=2)),
    "avg 3×3, stride 1, padding 1, counting the padding": Case(
        "avg", (2, 2, 5, 6), dict(kernel_size=3, stride=1, padding=1)
    ),
    "avg, padding not counted": Case(
        "avg", (2, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)
    ),
    "avg, ceil_mode's last window clipped": Case("avg", (2, 2, 7, 8), dict(kernel_size=3, stride=2, ceil_mode=True)),
    "avg, ceil_mode and padding not counted": Case(
        "avg", (2, 2, 7, 8), dict(kernel_size=(3, 2), stride=(2, 3), padding=1, ceil_mode=True, count_include_pad=False)
    ),
    "avg, divisor_override": Case("avg", (2, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, divisor_override=5)),
    "avg, a negative divisor_override": Case("avg", (2, 2, 6, 6), dict(kernel_size=2, divisor_override=-3)),
    "avg, unbatched (C, H, W)": Case("avg", (3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    "avg, empty batch": Case("avg", (0, 2, 6, 6), dict(kernel_size=2)),
    "adaptive, dividing evenly": Case("adaptive", (2, 3, 8, 6), dict(output_size=(4, 3))),
    "adaptive, windows that overlap": Case("adaptive", (2, 2, 7, 10), dict(output_size=(3, 4))),
    "adaptive, larger than the input": Case("adaptive", (2, 2, 3, 4), dict(output_size=(5, 7))),
    "adaptive, 1 × 1 (native's mean)": Case("adaptive", (3, 2, 5, 7), dict(output_size=1)),
    "adaptive, None keeps a dimension": Case("adaptive", (2, 2, 6, 7), dict(output_size=(None, 3))),
    "adaptive, an int": Case("adaptive", (2, 2, 9, 9), dict(output_size=4)),
    "adaptive, unbatched (C, H, W)": Case("adaptive", (3, 7, 5), dict(output_size=(3, 2))),
    "adaptive, empty batch": Case("adaptive", (0, 2, 6, 6), dict(output_size=(4, 5))),
}


def make_input(case: Case, dtype=f64, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if case.values == "equal":
        return torch.full(case.input, 0.5, dtype=dtype)
    if case.values == "integers":
        return torch.randint(0, 3, case.input, generator=generator).to(dtype)
    return torch.randn(case.input, generator=generator, dtype=f64).to(dtype)


def run(fn, x: torch.Tensor, options: dict, seed=1) -> tuple:
    """The outputs and the input's gradient for an upstream gradient drawn from ``seed``."""
    x = x.detach().clone().requires_grad_()
    outputs = fn(x, **options)
    output = outputs[0] if isinstance(outputs, tuple) else outputs
    delta = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=f64).to(output.dtype)
    (grad,) = torch.autograd.grad(output, x, delta)
    return (outputs if isinstance(outputs, tuple) else (outputs,)), grad


def both(case: Case, dtype=f64) -> tuple:
    x = make_input(case, dtype)
    hand, native = FUNCTIONS[case.layer]
    return run(hand, x, case.options), run(native, x, case.options)


# -- against native autograd -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_are_natives_bits(case, dtype):
    (outputs, grad), (native_outputs, native_grad) = both(CASES[case], dtype)
    assert len(outputs) == len(native_outputs)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(outputs, native_outputs))
    assert torch.equal(grad, native_grad)


@pytest.mark.parametrize("dtype", [f16, bf16, f32, f64], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_matches_native_in_every_dtype(case, dtype):
    """Through torchbp.check_function, whose tolerance follows the dtype (float16 and bfloat16 round
    where windows overlap, native's kernel in a precision of its own)."""
    case = CASES[case]
    hand, native = FUNCTIONS[case.layer]
    check_function(
        lambda x: hand(x, **case.options), lambda x: native(x, **case.options), make_input(case, dtype)
    ).assert_ok()


@pytest.mark.parametrize("case", [name for name in CASES if CASES[name].input[0] == 0])
def test_an_empty_batch_gives_zero_gradients_of_the_inputs_shape(case):
    (outputs, grad), (native_outputs, _) = both(CASES[case])
    assert outputs[0].shape == native_outputs[0].shape and outputs[0].shape[0] == 0
    assert grad.shape == CASES[case].input and not grad.any()


def test_return_indices_gives_natives_indices_not_differentiable():
    x = make_input(CASES["max, return_indices"]).requires_grad_()
    output, indices = TF.max_pool2d(x, 3, 2, return_indices=True)
    assert torch.equal(indices, F.max_pool2d(x, 3, 2, return_indices=True)[1])
    assert indices.dtype == torch.int64 and not indices.requires_grad and output.requires_grad


def test_a_window_wholly_in_the_padding_gives_natives_output_and_no_gradient():
    """Dilation 2 and padding 1 on a single column: each window's columns (−1 and 1) step over it. Native gives
    −∞ and an index outside the window, and its backward writes to the next row's element, or out of bounds
    (not run here)."""
    x = torch.randn(2, 2, 3, 1, dtype=f64, requires_grad=True)
    options = dict(kernel_size=(1, 2), stride=1, padding=(0, 1), dilation=(1, 2))
    output = TF.max_pool2d(x, **options)
    assert torch.equal(output, F.max_pool2d(x.detach(), **options)) and output.isneginf().all()
    (grad,) = torch.autograd.grad(output, x, torch.ones_like(output))
    assert torch.equal(grad, torch.zeros_like(x))


# -- any shape -----------------------------------------------------------------------------------

BATCH = st.sampled_from([None, 0, 1, 2, 3])  # None: an unbatched (C, H, W) input
WINDOWS = dict(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    half_padding=st.tuples(st.booleans(), st.booleans()),  # padding: 0 or half the kernel
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    ceil_mode=st.booleans(),
    values=st.sampled_from(["normal", "integers", "equal"]),
)


def windowed(n, kernel, stride, half_padding, size, values) -> tuple:
    padding = tuple(k // 2 if half else 0 for k, half in zip(kernel, half_padding))
    assume(all(s + 2 * p >= k for s, p, k in zip(size, padding, kernel)))  # room for a window
    return (2, *size) if n is None else (n, 2, *size), padding


def assert_natives_bits(case: Case):
    (outputs, grad), (native_outputs, native_grad) = both(case)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(outputs, native_outputs))
    assert torch.equal(grad, native_grad)


@given(n=BATCH, dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), **WINDOWS)
def test_max_pool2d_gives_natives_bits_for_any_shape(
    n, kernel, stride, half_padding, size, dilation, ceil_mode, values
):
    shape, padding = windowed(n, kernel, stride, half_padding, size, values)
    # Where a dilated window falls wholly in the padding native's backward writes out of bounds: not compared.
    for s, k, st_, p, d in zip(size, kernel, stride, padding, dilation):
        out = torchbp.validation.pooled_size(s, k, st_, p, d, ceil_mode)
        assume(out > 0 and max_module.reaches_input(out, s, k, st_, p, d, torch.device("cpu")).all())
    options = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    assert_natives_bits(Case("max", shape, options, values))


@given(n=BATCH, count_include_pad=st.booleans(), divisor_override=st.sampled_from([None, None, 2, -3]), **WINDOWS)
def test_avg_pool2d_gives_natives_bits_for_any_shape(
    n, kernel, stride, half_padding, size, ceil_mode, values, count_include_pad, divisor_override
):
    shape, padding = windowed(n, kernel, stride, half_padding, size, values)
    options = dict(
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
    )
    assert_natives_bits(Case("avg", shape, options, values))


@given(
    n=BATCH,
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    output_size=st.tuples(st.sampled_from([None, 1, 2, 3, 5, 7, 13]), st.sampled_from([None, 1, 2, 4, 6, 11])),
)
def test_adaptive_avg_pool2d_gives_natives_bits_for_any_shape(n, size, output_size):
    shape = (2, *size) if n is None else (n, 2, *size)
    assert_natives_bits(Case("adaptive", shape, dict(output_size=output_size)))


# -- finite differences, and torchbp.verify ------------------------------------------------------

SMALL = {  # few elements: gradcheck and gradgradcheck perturb each one (normal values: no ties)
    "max, overlapping, dilated, ceil_mode": Case(
        "max", (2, 2, 5, 4), dict(kernel_size=2, stride=1, padding=1, dilation=(2, 1), ceil_mode=True)
    ),
    "max, unbatched, return_indices": Case("max", (2, 4, 5), dict(kernel_size=(2, 3), stride=2, return_indices=True)),
    "avg, overlapping, ceil_mode, padding not counted": Case(
        "avg", (2, 2, 5, 4), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    ),
    "avg, divisor_override": Case("avg", (2, 5, 5), dict(kernel_size=2, stride=1, divisor_override=3)),
    "adaptive, windows that overlap": Case("adaptive", (2, 2, 5, 4), dict(output_size=(3, 3))),
    "adaptive, 1 × 1": Case("adaptive", (2, 2, 3, 4), dict(output_size=1)),
}


def differentiable(case: Case):
    hand = FUNCTIONS[case.layer][0]
    return lambda x: hand(x, **case.options)


@pytest.mark.parametrize("case", SMALL)
def test_gradcheck(case):
    x = make_input(SMALL[case]).requires_grad_()
    assert torch.autograd.gradcheck(differentiable(SMALL[case]), (x,))


@pytest.mark.parametrize("case", SMALL)
def test_gradgradcheck(case):
    x = make_input(SMALL[case]).requires_grad_()
    assert torch.autograd.gradgradcheck(differentiable(SMALL[case]), (x,))


VERIFIED = ["max 3×3, stride 2, padding 1: overlapping windows", "avg, ceil_mode and padding not counted"]
VERIFIED += ["adaptive, windows that overlap", "adaptive, 1 × 1 (native's mean)"]


@pytest.mark.parametrize("case", VERIFIED)
def test_passes_torchbp_verify(case):
    case = CASES[case]
    hand, native = FUNCTIONS[case.layer]
    report = torchbp.verify(
        lambda x: hand(x, **case.options),
        lambda x: native(x, **case.options),
        make_input(case, f32),
        compile_backend="aot_eager",
    )
    report.assert_ok()
    not_applicable = {row.name for row in report.rows if row.status == NOT_APPLICABLE}
    assert not_applicable == {"jvp", "needs-input-grad", *CUSTOM_OP_PROPERTIES}, report


# -- planted bugs: the comparisons above must catch each ------------------------------------------


def replaced(module, name, wrong):
    real = getattr(module, name)
    return module, name, lambda *args: wrong(real, *args)


PLANTED = {
    "max: a tie broken the other way (δ sent to the next element)": replaced(
        max_module,
        "max_pool2d_backward",
        lambda real, delta, m, shape, *rest: real(delta, (m + 1).clamp(max=shape[-2] * shape[-1] - 1), shape, *rest),
    ),
    "max: overlapping windows' δ written, not added": replaced(
        max_module,
        "max_pool2d_backward",
        lambda real, delta, m, shape, *rest: (
            delta.new_zeros((*shape[:-2], shape[-2] * shape[-1]))
            .scatter(-1, m.flatten(-2), delta.flatten(-2))
            .view(shape)
        ),
    ),
    "avg: the divisor dropped": replaced(
        avg_module, "avg_pool2d_backward", lambda real, delta, size, k, *rest: real(delta * k[0] * k[1], size, k, *rest)
    ),
    "avg: count_include_pad ignored": replaced(
        avg_module,
        "window_counts",
        lambda real, out, size, k, s, p, include, device: real(out, size, k, s, p, True, device),
    ),
    "avg: ceil_mode's last window not clipped": replaced(
        avg_module,
        "window_counts",
        lambda real, out, size, k, s, p, include, device: torch.full((out,), k, device=device),
    ),
    "adaptive: every window taken as the same size": replaced(
        adaptive_module,
        "windows",
        lambda real, out, size, device: (
            torch.arange(out, device=device) * size // out,
            torch.arange(out, device=device) * size // out + -(-size // out),
        ),
    ),
    "adaptive: δ divided by k_h alone": replaced(
        adaptive_module,
        "sum_over_windows",
        lambda real, delta, rows, columns, canvas: real(
            delta * (columns < canvas[1] - 1).sum(1), rows, columns, canvas
        ),
    ),
}


def caught(case: Case) -> bool:
    try:
        (_, grad), (_, native_grad) = both(case)
    except RuntimeError:  # a wrong shape is caught too
        return True
    return not torchbp.compare_tensors("grad", grad, native_grad).ok


@pytest.mark.parametrize("bug", PLANTED)
def test_a_planted_wrong_gradient_is_caught(bug, monkeypatch):
    module, name, wrong = PLANTED[bug]
    layer = {max_module: "max", avg_module: "avg", adaptive_module: "adaptive"}[module]
    monkeypatch.setattr(module, name, wrong)
    assert any(caught(case) for case in CASES.values() if case.layer == layer)


def test_a_tie_broken_the_other_way_is_caught_where_every_window_is_a_tie(monkeypatch):
    monkeypatch.setattr(*PLANTED["max: a tie broken the other way (δ sent to the next element)"])
    assert caught(CASES["max, every window a tie"])


def test_verify_fails_on_a_planted_wrong_gradient(monkeypatch):
    monkeypatch.setattr(*PLANTED["avg: the divisor dropped"])
    case = SMALL["avg, divisor_override"]
    case = case._replace(options=dict(kernel_size=2, stride=1))
    report = torchbp.verify(
        differentiable(case), lambda x: F.avg_pool2d(x, 2, 1), make_input(case), only=("float64", "gradcheck")
    )
    assert [row.status for row in report.rows] == ["fail", "fail"], report


# -- bad input -------------------------------------------------------------------------------------


class Bad(NamedTuple):
    layer: str
    input: object
    args: tuple
    error: type
    message: str
    native: type | None = RuntimeError  # what native raises for the same call; None where it accepts it


x4 = torch.randn(2, 3, 5, 5)
BAD_INPUTS = {
    "max: 2-d input": Bad(
        "max", torch.randn(5, 5), (2,), torchbp.ShapeError, r"\(N, C, H, W\) or \(C, H, W\).*got \(5, 5\)"
    ),
    "max: no channel": Bad("max", torch.randn(2, 0, 5, 5), (2,), torchbp.ShapeError, r"got \(2, 0, 5, 5\)"),
    "max: kernel larger than the padded input": Bad(
        "max",
        x4,
        (4, None, 1, 3),
        torchbp.ShapeError,
        r"input \(2, 3, 5, 5\) with kernel_size \(4, 4\).*padding \(1, 1\), dilation \(3, 3\).*output of 0 × 0",
    ),
    "max: padding over half the kernel": Bad(
        "max",
        x4,
        ((3, 2), None, (1, 2)),
        torchbp.ArgumentError,
        r"half the kernel_size \(3, 2\), \(1, 1\), got \(1, 2\)",
    ),
    "max: negative padding": Bad("max", x4, (3, None, -1), torchbp.ArgumentError, r"got \(-1, -1\)"),
    "max: a kernel of 0": Bad("max", x4, (0, 1), torchbp.ArgumentError, r"kernel_size of ints ≥ 1, got \(0, 0\)"),
    "max: a negative stride": Bad("max", x4, (2, (1, -2)), torchbp.ArgumentError, r"stride.*\(1, -2\)"),
    "max: dilation 0": Bad("max", x4, (2, None, 0, 0), torchbp.ArgumentError, r"dilation.*\(0, 0\)"),
    "max: a kernel of three sizes": Bad("max", x4, ((2, 2, 2),), torchbp.ArgumentError, r"kernel_size.*\(2, 2, 2\)"),
    "max: a float kernel": Bad("max", x4, (2.0,), TypeError, "kernel_size.*2.0", TypeError),
    "max: an integer input": Bad(  # native pools integers, without gradients
        "max", torch.ones(2, 3, 4, 4, dtype=torch.int64), (2,), torchbp.DTypeError, "torch.int64", None
    ),
    "avg: 5-d input": Bad("avg", torch.randn(1, 2, 3, 4, 4), (2,), torchbp.ShapeError, r"\(1, 2, 3, 4, 4\)"),
    "avg: kernel larger than the input": Bad(
        "avg", x4, (6,), torchbp.ShapeError, r"input \(2, 3, 5, 5\) with kernel_size \(6, 6\).*0 × 0"
    ),
    "avg: padding over half the kernel": Bad(
        "avg", x4, (2, None, 2), torchbp.ArgumentError, r"\(2, 2\), \(1, 1\), got \(2, 2\)"
    ),
    "avg: divisor_override 0": Bad(
        "avg", x4, (2, None, 0, False, True, 0), torchbp.ArgumentError, "other than 0, got 0"
    ),
    "avg: a float divisor_override": Bad("avg", x4, (2, None, 0, False, True, 2.5), TypeError, "2.5", TypeError),
    "avg: an integer input": Bad(
        "avg", torch.ones(2, 3, 4, 4, dtype=torch.int32), (2,), torchbp.DTypeError, "torch.int32", None
    ),
    "adaptive: 2-d input": Bad("adaptive", torch.randn(5, 5), (2,), torchbp.ShapeError, r"got \(5, 5\)"),
    "adaptive: an empty row": Bad(
        "adaptive", torch.randn(2, 3, 0, 5), (2,), torchbp.ShapeError, r"H and W at least 1, got \(2, 3, 0, 5\)"
    ),
    "adaptive: a negative size": Bad("adaptive", x4, ((3, -1),), torchbp.ArgumentError, r"≥ 0, got \(3, -1\)"),
    "adaptive: three sizes": Bad("adaptive", x4, ((2, 2, 2),), torchbp.ArgumentError, r"\(2, 2, 2\)"),
    "adaptive: an integer input": Bad(
        "adaptive",
        torch.ones(2, 3, 4, 4, dtype=torch.int64),
        (2,),
        torchbp.DTypeError,
        "torch.int64",
        NotImplementedError,
    ),
    "not a tensor": Bad("avg", [[1.0]], (1,), TypeError, "torch.Tensor.*list", TypeError),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    bad = BAD_INPUTS[case]
    with pytest.raises(bad.error, match=bad.message):
        FUNCTIONS[bad.layer][0](bad.input, *bad.args)


@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if BAD_INPUTS[c].native is not None])
def test_native_refuses_the_same_with_the_same_kind_of_error(case):
    bad = BAD_INPUTS[case]
    with pytest.raises(bad.native):
        FUNCTIONS[bad.layer][1](bad.input, *bad.args)
    assert issubclass(bad.error, bad.native if bad.native is not NotImplementedError else RuntimeError)


class NoArithmetic(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        raise AssertionError(f"{func} ran before the input was refused")


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_any_arithmetic(case):
    bad = BAD_INPUTS[case]
    with pytest.raises(bad.error), NoArithmetic():
        FUNCTIONS[bad.layer][0](bad.input, *bad.args)


BAD_MODULES = {
    "MaxPool2d with a kernel of 0": (lambda: torchbp.nn.MaxPool2d(0), torchbp.ArgumentError, r"\(0, 0\)"),
    "MaxPool2d with padding over half the kernel": (
        lambda: torchbp.nn.MaxPool2d(2, padding=2),
        torchbp.ArgumentError,
        r"got \(2, 2\)",
    ),
    "AvgPool2d with divisor_override 0": (
        lambda: torchbp.nn.AvgPool2d(2, divisor_override=0),
        torchbp.ArgumentError,
        "other than 0",
    ),
    "AvgPool2d with a negative stride": (
        lambda: torchbp.nn.AvgPool2d(2, stride=-1),
        torchbp.ArgumentError,
        r"\(-1, -1\)",
    ),
    "AdaptiveAvgPool2d of a negative size": (
        lambda: torchbp.nn.AdaptiveAvgPool2d((-2, 3)),
        torchbp.ArgumentError,
        r"\(-2, 3\)",
    ),
}


@pytest.mark.parametrize("case", BAD_MODULES)
def test_a_module_refuses_at_construction_what_native_refuses_at_its_first_forward(case):
    construct, error, message = BAD_MODULES[case]
    with pytest.raises(error, match=message):
        construct()


# -- the modules -------------------------------------------------------------------------------------

MODELS = {
    "MaxPool2d": torch.nn.MaxPool2d(3, stride=2, padding=1),
    "MaxPool2d, ceil_mode and dilation": torch.nn.MaxPool2d((2, 3), stride=1, dilation=(2, 1), ceil_mode=True),
    "AvgPool2d": torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    "AvgPool2d, divisor_override": torch.nn.AvgPool2d(2, divisor_override=3, ceil_mode=True),
    "AdaptiveAvgPool2d": torch.nn.AdaptiveAvgPool2d((3, None)),
    "AdaptiveAvgPool2d, 1 × 1": torch.nn.AdaptiveAvgPool2d(1),
}


def model_with(pool: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), pool, torch.nn.Flatten()).double()


@pytest.mark.parametrize("name", MODELS)
def test_convert_replaces_the_native_module_and_check_model_says_match(name):
    model = model_with(MODELS[name])
    converted = torchbp.convert(model)
    assert type(converted[1]) is getattr(torchbp.nn, type(MODELS[name]).__name__)
    assert repr(converted[1]).startswith("torchbp.")
    x = torch.randn(4, 2, 7, 7, generator=torch.Generator().manual_seed(1), dtype=f64)
    report = torchbp.check_model(model, torch.nn.MSELoss(), x, torch.randn_like(model(x)))
    report.assert_ok()
    assert f"1 {type(MODELS[name]).__name__}" in report.layers.split(";")[0], report.layers


def test_max_pool2d_module_returns_natives_indices():
    native = torch.nn.MaxPool2d(2, return_indices=True)
    x = torch.randn(2, 3, 6, 6)
    output, indices = torchbp.convert(native)(x)
    expected = native(x)
    assert torch.equal(output, expected[0]) and torch.equal(indices, expected[1])
