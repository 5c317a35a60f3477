"""Conv2dFunction against native autograd: settings, any shape, bit identity, verify, per-sample math, bad input."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import torchbp
import torchbp.layers.conv2d as conv2d_module
from torchbp.check import check_function
from torchbp.compare import compare_tensors
from torchbp.layers.conv2d import (
    Conv2dFunction,
    numeric_padding,
    per_sample_bias_grads,
    per_sample_weight_grad_norms_squared,
    per_sample_weight_grads,
    weight_gradient,
    weight_gradient_by_offsets,
)
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES
from torchbp.verification.report import NOT_APPLICABLE

conv2d = Conv2dFunction.apply
f32, f64 = torch.float32, torch.float64


def setting(input, weight, bias=True, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """A convolution's shapes and options; weight is (out_channels, in_channels / groups, kH, kW)."""
    return dict(input=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


CASES = {
    "3×3, padding 1": setting((4, 3, 8, 8), (5, 3, 3, 3), padding=(1, 1)),
    "stride 2, a row and a column no window reaches": setting((3, 2, 8, 9), (4, 2, 3, 3), stride=(2, 2)),
    "dilation 2": setting((3, 2, 9, 9), (3, 2, 3, 3), padding=(1, 1), dilation=(2, 2)),
    "non-square kernel, stride, padding and dilation per dimension": setting(
        (2, 3, 9, 11), (4, 3, 2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)
    ),
    "1×1 kernel, stride 3": setting((3, 4, 7, 7), (2, 4, 1, 1), stride=(3, 3)),
    "no bias": setting((3, 2, 6, 6), (3, 2, 3, 3), bias=False, padding=(1, 1)),
    "one sample": setting((1, 2, 6, 5), (3, 2, 2, 2), stride=(2, 1)),
    "unbatched (C, H, W)": setting((3, 7, 7), (4, 3, 3, 3), stride=(2, 2), padding=(1, 1)),
    "empty batch": setting((0, 3, 6, 6), (4, 3, 3, 3), padding=(1, 1)),
    "2 groups": setting((3, 4, 7, 7), (6, 2, 3, 3), padding=(1, 1), groups=2),
    "depthwise (groups = channels)": setting((3, 4, 7, 7), (4, 1, 3, 3), padding=(1, 1), groups=4),
    "depthwise, 2 outputs a channel, stride 2, dilation 2": setting(
        (2, 3, 9, 8), (6, 1, 3, 2), stride=(2, 2), dilation=(2, 1), groups=3
    ),
    "3 groups, unbatched": setting((6, 6, 6), (3, 2, 2, 2), stride=(1, 2), groups=3),
    "depthwise, empty batch": setting((0, 3, 5, 5), (3, 1, 3, 3), groups=3),
}


def make_inputs(case: dict, dtype=f64, seed=0) -> tuple:
    """(input, weight, bias, stride, padding, dilation, groups) for a setting, drawn from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["input"], generator=generator, dtype=f64).to(dtype)
    w = torch.randn(case["weight"], generator=generator, dtype=f64).to(dtype)
    b = torch.randn(case["weight"][0], generator=generator, dtype=f64).to(dtype) if case["bias"] else None
    return x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"]


def requiring_grad(inputs: tuple, which: str = "xwb") -> tuple:
    x, w, b, *arguments = inputs
    return (
        *(t if t is None else t.clone().requires_grad_(name in which) for name, t in zip("xwb", (x, w, b))),
        *arguments,
    )


# -- against native autograd ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f32, f64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_conv2d_matches_native(case, dtype):
    check_function(conv2d, F.conv2d, *make_inputs(CASES[case], dtype)).assert_ok()


# A convolution's sizes for hypothesis: (in, out) channels of each of its groups, and per spatial dimension
# the kernel, stride, padding, dilation and how many rows or columns the input has past the smallest one a
# window fits in.
CONVOLUTIONS = dict(
    groups=st.integers(1, 3),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
)


def input_size(kernel, padding, dilation, extra) -> tuple:
    """The smallest (H, W) a window fits in, and ``extra`` rows and columns more."""
    return tuple(max(1, d * (k - 1) + 1 - 2 * p) + e for k, p, d, e in zip(kernel, padding, dilation, extra))


@given(
    n=st.sampled_from([None, 0, 1, 2, 3]),  # None: an unbatched (C, H, W) input
    bias=st.booleans(),
    dtype=st.sampled_from([f32, f64]),
    **CONVOLUTIONS,
)
def test_conv2d_matches_native_for_any_shape(
    n, groups, channels, kernel, stride, padding, dilation, extra, bias, dtype
):
    c, o = channels  # per group
    size = input_size(kernel, padding, dilation, extra)
    shape = (c * groups, *size) if n is None else (n, c * groups, *size)
    case = setting(shape, (o * groups, c, *kernel), bias, stride, padding, dilation, groups)
    check_function(conv2d, F.conv2d, *make_inputs(case, dtype)).assert_ok()


def native_weight_gradient(case: dict) -> tuple:
    x, w, b, stride, padding, dilation, groups = make_inputs(case)
    w.requires_grad_()
    z = F.conv2d(x, w, b, stride, padding, dilation, groups)
    delta = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=z.dtype)
    (grad_w,) = torch.autograd.grad(z, w, delta)
    return (x, delta, tuple(w.shape[2:]), stride, padding, dilation, groups), grad_w


@pytest.mark.parametrize("case", [c for c in CASES if len(CASES[c]["input"]) == 4])
def test_the_weight_gradient_taken_while_compiling_matches_native(case):
    """weight_gradient_by_offsets, the route of torch.compile (any batch size), against native autograd."""
    arguments, expected = native_weight_gradient(CASES[case])
    actual = weight_gradient_by_offsets(*arguments)
    assert compare_tensors("weight", actual, expected).ok
    assert not compare_tensors("weight", actual * (1 + 1e-6), expected).ok or expected.abs().max() == 0


@given(n=st.integers(0, 3), **CONVOLUTIONS)
def test_the_weight_gradient_taken_while_compiling_matches_native_for_any_shape(
    n, groups, channels, kernel, stride, padding, dilation, extra
):
    c, o = channels  # per group
    size = input_size(kernel, padding, dilation, extra)
    arguments, expected = native_weight_gradient(
        setting((n, c * groups, *size), (o * groups, c, *kernel), False, stride, padding, dilation, groups)
    )
    assert compare_tensors("weight", weight_gradient_by_offsets(*arguments), expected).ok


def gradients(fn, inputs: tuple, grad_output: torch.Tensor, which: str) -> tuple:
    leaves = requiring_grad(inputs, which)
    return torch.autograd.grad(fn(*leaves), [t for name, t in zip("xwb", leaves[:3]) if name in which], grad_output)


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_input_gradient_is_bit_identical_to_native(case, dtype):
    inputs = make_inputs(CASES[case], dtype)
    grad_output = torch.randn_like(F.conv2d(*inputs))
    assert torch.equal(*gradients(conv2d, inputs, grad_output, "x"), *gradients(F.conv2d, inputs, grad_output, "x"))


# Grouped convolution's native backward sums ∂J/∂b in an order of its own (its depthwise kernel, or group by group).
@pytest.mark.parametrize(
    "case", [c for c in CASES if CASES[c]["bias"] and CASES[c]["dilation"] == (1, 1) and CASES[c]["groups"] == 1]
)
def test_bias_gradient_is_bit_identical_to_native_in_float64_without_dilation(case):
    inputs = make_inputs(CASES[case], f64)
    grad_output = torch.randn_like(F.conv2d(*inputs))
    assert torch.equal(*gradients(conv2d, inputs, grad_output, "b"), *gradients(F.conv2d, inputs, grad_output, "b"))


def test_unbatched_output_takes_in_place_writes_as_natives_does():
    inputs = make_inputs(CASES["unbatched (C, H, W)"])
    in_place = lambda fn: lambda *args: fn(*args).relu_()  # noqa: E731
    check_function(in_place(conv2d), in_place(F.conv2d), *inputs).assert_ok()


# -- finite differences, and torchbp.verify ------------------------------------------------

SMALL = {  # few elements: gradcheck and gradgradcheck perturb each one
    "stride 2, padding 1": setting((2, 2, 4, 4), (3, 2, 3, 3), stride=(2, 2), padding=(1, 1)),
    "dilation 2, non-square kernel": setting((2, 2, 5, 4), (2, 2, 2, 3), dilation=(2, 1)),
    "no bias, stride and padding per dimension": setting((2, 2, 4, 4), (2, 2, 3, 2), False, (1, 2), (1, 0)),
}
GRADCHECK_CASES = {  # the settings verify's gradcheck and double-backward (below) do not see
    "unbatched": setting((2, 5, 5), (3, 2, 2, 2), stride=(2, 1), padding=(0, 1)),
    "1×1 kernel, stride 3": setting((2, 2, 4, 5), (2, 2, 1, 1), stride=(3, 3)),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    assert torch.autograd.gradcheck(conv2d, requiring_grad(make_inputs(GRADCHECK_CASES[case])))


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradgradcheck(case):
    assert torch.autograd.gradgradcheck(conv2d, requiring_grad(make_inputs(GRADCHECK_CASES[case])))


@pytest.mark.parametrize("case", SMALL)
def test_conv2d_passes_torchbp_verify(case):
    inputs = make_inputs(SMALL[case], f32)
    report = torchbp.verify(conv2d, F.conv2d, *inputs, skip=("autocast",), compile_backend="aot_eager")
    report.assert_ok()
    assert {row.name for row in report.rows if row.status == NOT_APPLICABLE} == {"jvp", *CUSTOM_OP_PROPERTIES}, report


# -- what the backward does and keeps ------------------------------------------------------


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "wanted, convolutions, sums",
    [
        ("xwb", 2, 1),
        ("wb", 1, 1),  # no transposed convolution for an input nobody differentiates
        ("x", 1, 0),  # a frozen layer: neither the correlation nor Σ δ
        ("b", 0, 1),
    ],
)
def test_backward_does_only_the_work_asked_for(wanted, convolutions, sums):
    x, w, b, *arguments = requiring_grad(make_inputs(CASES["3×3, padding 1"]), wanted)
    out = conv2d(x, w, b, *arguments)
    with CountOps() as counter:
        out.backward(torch.ones_like(out))
    assert counter.ops.count("convolution") == convolutions
    assert counter.ops.count("sum") == sums


@pytest.mark.parametrize("wanted, kept", [("w", "x"), ("x", "w"), ("b", ""), ("xwb", "xw")])
def test_saves_only_what_its_backward_reads(wanted, kept):
    x, w, b, *arguments = requiring_grad(make_inputs(CASES["3×3, padding 1"]), wanted)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv2d(x, w, b, *arguments)
    assert [next(name for name, t in zip("xw", (x, w)) if s is t) for s in saved] == list(kept)


# -- numeric_padding: "same" and "valid" for the functional wrapper -------------------------

NUMERIC_PADDINGS = [
    ("valid", (3, 3), (1, 1), ((0, 0), None)),
    ("same", (3, 3), (1, 1), ((1, 1), None)),
    ("same", (3, 3), (2, 1), ((2, 1), None)),
    ("same", (2, 3), (1, 1), ((0, 1), (0, 0, 0, 1))),  # an odd total: one more row at the bottom
    ("same", (2, 2), (3, 2), ((1, 1), (0, 0, 0, 1))),
    ("same", (4, 1), (1, 5), ((1, 0), (0, 0, 0, 1))),
    ((2, 1), (3, 3), (1, 1), ((2, 1), None)),
    (2, (3, 3), (1, 1), ((2, 2), None)),
]


@pytest.mark.parametrize("padding, kernel, dilation, expected", NUMERIC_PADDINGS, ids=str)
def test_numeric_padding(padding, kernel, dilation, expected):
    assert numeric_padding(padding, kernel, dilation) == expected


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # native's, about its own copy
@pytest.mark.parametrize("padding, kernel, dilation, expected", NUMERIC_PADDINGS[:6], ids=str)
def test_numeric_padding_gives_natives_convolution(padding, kernel, dilation, expected):
    pair, extra = expected
    x, w = torch.randn(2, 3, 7, 6, dtype=f64), torch.randn(2, 3, *kernel, dtype=f64)
    ours = lambda x, w: conv2d(F.pad(x, extra) if extra else x, w, None, (1, 1), pair, dilation, 1)  # noqa: E731
    native = lambda x, w: F.conv2d(x, w, padding=padding, dilation=dilation)  # noqa: E731
    assert torch.equal(ours(x, w), native(x, w))
    check_function(ours, native, x, w).assert_ok()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("full", (3, 3), (1, 1)), "Invalid padding string: 'full'"),
        (("same", (3, 3), (1, 1), (2, 1)), "not supported for strided convolutions"),
    ],
)
def test_numeric_padding_refuses_what_native_refuses(arguments, message):
    with pytest.raises(ValueError, match=message):
        numeric_padding(*arguments)


# -- bad input -------------------------------------------------------------------------------


def call(input=(2, 3, 8, 8), weight=(4, 3, 3, 3), bias=(4,), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """conv2d on tensors of these shapes (or the given tensors), with one thing changed."""
    as_tensor = lambda t: torch.randn(t) if isinstance(t, tuple) else t  # noqa: E731
    tensors = as_tensor(input), as_tensor(weight), bias and as_tensor(bias)
    return lambda: conv2d(*tensors, stride, padding, dilation, groups)


BAD_INPUTS = {
    "3-d weight": (
        call(weight=(4, 3, 3)),
        torchbp.ShapeError,
        r"weight of shape \(out_channels, in_channels / groups, kH, kW\).*\(4, 3, 3\)",
    ),
    "weight with no output channel": (
        call(weight=(0, 3, 3, 3), bias=None),
        torchbp.ShapeError,
        r"at least one channel.*\(0, 3, 3, 3\)",
    ),
    "2-d input": (call(input=(3, 8)), torchbp.ShapeError, r"\(N, 3, H, W\) or \(3, H, W\).*got input \(3, 8\)"),
    "input channels differ from weight's": (
        call(input=(2, 5, 8, 8)),
        torchbp.ShapeError,
        r"\(N, 3, H, W\).*weight \(4, 3, 3, 3\), got input \(2, 5, 8, 8\)",
    ),
    "bias of the wrong size": (call(bias=(3,)), torchbp.ShapeError, r"bias of shape \(4,\).*got bias \(3,\)"),
    "kernel larger than the padded input": (
        call(input=(2, 3, 4, 4), dilation=(2, 2)),
        torchbp.ShapeError,
        r"dilated kernel \(5, 5\).*input \(2, 3, 4, 4\) with padding \(0, 0\).*dilation \(2, 2\)",
    ),
    "integer input": (
        call(input=torch.ones(2, 3, 8, 8, dtype=torch.int64)),
        torchbp.DTypeError,
        "floating-point.*torch.int64",
    ),
    "float64 weight with a float32 input": (
        call(weight=torch.randn(4, 3, 3, 3, dtype=f64)),
        torchbp.DTypeError,
        "torch.float32.*torch.float64",
    ),
    "weight on another device": (call(weight=torch.randn(4, 3, 3, 3, device="meta")), torchbp.DeviceError, "cpu.*meta"),
    "not a tensor": (call(input=[[1.0]]), TypeError, "torch.Tensor.*list"),
    "stride as an int": (call(stride=2), TypeError, "stride as a tuple of two ints, got 2"),
    "padding as a string": (call(padding="same"), TypeError, "padding.*'same'.*numeric_padding"),
    "dilation of one entry": (call(dilation=(1,)), TypeError, r"dilation as a tuple of two ints, got \(1,\)"),
    "stride 0": (call(stride=(0, 1)), ValueError, r"stride of ints ≥ 1, got \(0, 1\)"),
    "negative padding": (call(padding=(1, -1)), ValueError, r"padding of ints ≥ 0, got \(1, -1\)"),
    "groups not dividing the output channels": (
        call(input=(2, 6, 8, 8), weight=(4, 2, 3, 3), groups=3),
        torchbp.ShapeError,
        r"groups=3 to divide the weight's 4 output channels",
    ),
    "input channels other than groups × the weight's": (
        call(input=(2, 5, 8, 8), weight=(4, 2, 3, 3), groups=2),
        torchbp.ShapeError,
        r"\(N, 4, H, W\) or \(4, H, W\) \(2 groups of 2\).*got input \(2, 5, 8, 8\)",
    ),
    "groups 0": (call(groups=0), ValueError, "groups ≥ 1, got 0"),
    "groups as a string": (call(groups="2"), TypeError, "groups to be an int, got '2'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    bad_call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        bad_call()


@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if issubclass(BAD_INPUTS[c][1], RuntimeError)])
def test_torchbp_errors_are_runtime_errors_like_native_torchs(case):
    with pytest.raises(RuntimeError):
        BAD_INPUTS[case][0]()


# -- planted bugs: the checks above must catch each --------------------------------------------


def bias_gradient(wrong):
    """conv2d_backward with its ∂J/∂b replaced by wrong(δ), δ as (n, o, h, w)."""
    real = conv2d_module.conv2d_backward

    def planted(delta, *rest):
        grad_a_prev, grad_W, grad_b = real(delta, *rest)
        batched = delta if delta.dim() == 4 else delta.unsqueeze(0)
        return grad_a_prev, grad_W, None if grad_b is None else wrong(batched)

    return "conv2d_backward", planted


def replaced(name, wrong):
    real = getattr(conv2d_module, name)
    return name, lambda *args: wrong(real, *args)


PLANTED = {
    "∂J/∂a_prev: the kernel not flipped (a correlation of δ)": replaced(
        "input_gradient", lambda real, delta, W, *rest: real(delta, W.flip(2, 3), *rest)
    ),
    "∂J/∂W: the window read from the far end": replaced(
        "weight_gradient",
        lambda real, a, delta, k, s, p, d, g: F.conv2d(a.transpose(0, 1), delta.transpose(0, 1), None, d, p, s)[
            :, :, -k[0] :, -k[1] :
        ].transpose(0, 1),
    ),
    "∂J/∂W: stride and dilation not traded": replaced(
        "weight_gradient", lambda real, a, delta, k, s, p, d, g: real(a, delta, k, d, p, s, g)
    ),
    "∂J/∂W: each group paired with the first group's outputs": replaced(
        "weight_gradient",
        lambda real, a, delta, k, s, p, d, g: real(
            a, delta[:, : delta.shape[1] // g].repeat(1, g, 1, 1), k, s, p, d, g
        ),
    ),
    "∂J/∂a_prev: the groups' kernels in the wrong order": replaced(
        "input_gradient", lambda real, delta, W, *rest: real(delta, W.flip(0), *rest)
    ),
    "∂J/∂W: kernel rows and columns swapped": replaced(
        "weight_gradient", lambda real, *args: real(*args).transpose(2, 3)
    ),
    "∂J/∂b: a mean over positions, not a sum": bias_gradient(lambda delta: delta.mean((2, 3)).sum(0)),
    "∂J/∂b: summed over part of the batch": bias_gradient(lambda delta: delta[1:].sum((0, 2, 3))),
}


def caught(case: dict) -> bool:
    try:
        return not check_function(conv2d, F.conv2d, *make_inputs(case)).ok
    except RuntimeError:  # a wrong shape is caught too
        return True


@pytest.mark.parametrize("bug", PLANTED)
def test_a_planted_wrong_gradient_is_caught(bug, monkeypatch):
    monkeypatch.setattr(conv2d_module, *PLANTED[bug])
    assert any(caught(case) for case in CASES.values())


def test_verify_fails_on_a_planted_wrong_gradient(monkeypatch):
    monkeypatch.setattr(conv2d_module, *PLANTED["∂J/∂a_prev: the kernel not flipped (a correlation of δ)"])
    report = torchbp.verify(conv2d, F.conv2d, *make_inputs(SMALL["stride 2, padding 1"]), only=("float64", "gradcheck"))
    assert [row.status for row in report.rows] == ["fail", "fail"], report


# -- the per-sample view ----------------------------------------------------------------------

PER_SAMPLE_CASES = {
    "3×3, padding 1": setting((5, 3, 6, 6), (4, 3, 3, 3), padding=(1, 1)),
    "stride 2 and dilation 2": setting((4, 2, 9, 8), (3, 2, 2, 3), stride=(2, 1), dilation=(1, 2)),
    "one sample, no bias": setting((1, 2, 5, 5), (3, 2, 3, 3), bias=False, stride=(2, 2), padding=(1, 0)),
    "empty batch": setting((0, 2, 5, 5), (3, 2, 3, 3)),
    "2 groups, padding 1": setting((4, 4, 5, 5), (6, 2, 3, 3), padding=(1, 1), groups=2),
    "depthwise, stride 2": setting((3, 3, 7, 7), (3, 1, 3, 3), stride=(2, 2), groups=3),
}


def per_sample_arguments(case: dict) -> tuple:
    x, w, b, stride, padding, dilation, groups = make_inputs(case)
    delta = torch.randn_like(F.conv2d(x, w, b, stride, padding, dilation, groups))
    return x, w, b, delta, (stride, padding, dilation, tuple(w.shape[2:]), groups)


def loop_reference(x, w, b, delta, stride, padding, dilation, kernel, groups):
    """One native backward per sample, on a batch of one."""
    per_sample = []
    for n in range(len(x)):
        w_n, b_n = (None if t is None else t.clone().requires_grad_() for t in (w, b))
        wanted = [t for t in (w_n, b_n) if t is not None]
        per_sample.append(
            torch.autograd.grad(
                F.conv2d(x[n : n + 1], w_n, b_n, stride, padding, dilation, groups), wanted, delta[n : n + 1]
            )
        )
    return [torch.stack(grads) for grads in zip(*per_sample)]


def func_reference(x, w, b, delta, stride, padding, dilation, kernel, groups):
    """torch.func.vmap(torch.func.grad(...)) of F.conv2d: every call sees one unbatched sample."""

    def cost(w, b, x_n, delta_n):
        return (F.conv2d(x_n, w, b, stride, padding, dilation, groups) * delta_n).sum()

    argnums = (0, 1) if b is not None else (0,)
    return list(torch.func.vmap(torch.func.grad(cost, argnums=argnums), in_dims=(None, None, 0, 0))(w, b, x, delta))


def ours(x, w, b, delta, *arguments):
    grads = [per_sample_weight_grads(delta, x, *arguments)]
    return grads + ([per_sample_bias_grads(delta)] if b is not None else [])


@pytest.mark.parametrize("reference", [loop_reference, func_reference], ids=["loop", "torch.func"])
@pytest.mark.parametrize("case", [c for c in PER_SAMPLE_CASES if c != "empty batch"])
def test_per_sample_grads_match_reference(case, reference):
    x, w, b, delta, arguments = per_sample_arguments(PER_SAMPLE_CASES[case])
    expected = reference(x, w, b, delta, *arguments)
    for mine, theirs in zip(ours(x, w, b, delta, *arguments), expected, strict=True):
        assert compare_tensors("per-sample", mine, theirs).ok


@pytest.mark.parametrize("case", PER_SAMPLE_CASES)
def test_per_sample_weight_grads_add_up_to_the_weight_gradient(case):
    x, _, _, delta, arguments = per_sample_arguments(PER_SAMPLE_CASES[case])
    stride, padding, dilation, kernel, groups = arguments
    summed = per_sample_weight_grads(delta, x, *arguments).sum(0)
    torch.testing.assert_close(summed, weight_gradient(x, delta, kernel, stride, padding, dilation, groups))


def test_per_sample_grads_write_into_out():
    x, w, b, delta, arguments = per_sample_arguments(PER_SAMPLE_CASES["2 groups, padding 1"])
    weight_out, bias_out = torch.empty(len(x), *w.shape, dtype=f64), torch.empty(len(x), len(b), dtype=f64)
    assert per_sample_weight_grads(delta, x, *arguments, out=weight_out) is weight_out
    assert per_sample_bias_grads(delta, out=bias_out) is bias_out
    torch.testing.assert_close([weight_out, bias_out], ours(x, w, b, delta, *arguments))


def test_an_empty_batch_gives_empty_per_sample_grads():
    x, w, b, delta, arguments = per_sample_arguments(PER_SAMPLE_CASES["empty batch"])
    assert per_sample_weight_grads(delta, x, *arguments).shape == (0, *w.shape)
    assert per_sample_bias_grads(delta).shape == (0, len(b))
    assert per_sample_weight_grad_norms_squared(delta, x, *arguments).shape == (0,)


NORM_CASES = {  # L (o + c·kH·kW) against o·c·kH·kW decides
    "few positions, many channels: Gram matrices": (setting((3, 8, 4, 4), (16, 8, 3, 3)), True),  # 4·88 < 1152
    "many positions: formed gradients": (setting((3, 2, 8, 8), (3, 2, 3, 3), stride=(1, 2)), False),  # 18·21 > 54
}


class RecordShapes(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes |= {
            tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)
        }
        return out


@pytest.mark.parametrize("case", NORM_CASES)
def test_per_sample_norms_are_the_norms_of_the_gradients(case):
    x, _, _, delta, arguments = per_sample_arguments(NORM_CASES[case][0])
    expected = per_sample_weight_grads(delta, x, *arguments).flatten(1).square().sum(1)
    torch.testing.assert_close(per_sample_weight_grad_norms_squared(delta, x, *arguments), expected)


@pytest.mark.parametrize("case", NORM_CASES)
def test_per_sample_norms_form_the_gradients_only_where_that_is_cheaper(case):
    (shape, gram) = NORM_CASES[case]
    x, w, _, delta, arguments = per_sample_arguments(shape)
    with RecordShapes() as recorded:
        per_sample_weight_grad_norms_squared(delta, x, *arguments)
    formed = (len(x), w.shape[0], w[0].numel())  # (n, o, c·kH·kW)
    assert (formed in recorded.shapes) == (not gram)


PER_SAMPLE_PLANTED = {
    "each δ_n paired with the previous sample's windows": (
        "_unfold",
        lambda a, k, s, p, d: F.unfold(a, k, d, p, s).roll(1, 0),
    ),
    "windows unfolded without padding": (
        "_unfold",
        lambda a, k, s, p, d: F.unfold(F.pad(a, (0, 2 * p[1], 0, 2 * p[0])), k, d, 0, s),
    ),
}


@pytest.mark.parametrize("bug", PER_SAMPLE_PLANTED)
def test_a_planted_per_sample_bug_is_caught(bug, monkeypatch):
    monkeypatch.setattr(conv2d_module, *PER_SAMPLE_PLANTED[bug])

    def matches(case):
        x, w, b, delta, arguments = per_sample_arguments(case)
        try:
            mine = ours(x, w, b, delta, *arguments)
        except RuntimeError:
            return False
        return all(compare_tensors("", m, t).ok for m, t in zip(mine, func_reference(x, w, b, delta, *arguments)))

    assert not all(matches(case) for name, case in PER_SAMPLE_CASES.items() if name != "empty batch")
