"""GroupNormFunction against native group_norm: values, gradients, transforms, bad input, the module, per-sample
gradients."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import torchbp
import torchbp.functional as TF
from torchbp.check import check_function
from torchbp.compare import compare_tensors
from torchbp.layers import group_norm as group_norm_module
from torchbp.layers.group_norm import (
    OVER_D,
    GroupNormFunction,
    grouped,
    normalize,
    per_sample_bias_grad_norms_squared,
    per_sample_bias_grads,
    per_sample_weight_grad_norms_squared,
    per_sample_weight_grads,
)
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES

from conftest import SAVED_BY_A_NORMALISATION, per_sample_by_torch_func

EPS = 1e-5
f32, f64 = torch.float32, torch.float64
DTYPES = [f32, f64]
AFFINE = {"affine": (True, True), "no affine": (False, False), "weight only": (True, False)}


def group_norm(x, num_groups, weight=None, bias=None, eps=EPS):
    y, _, _ = GroupNormFunction.apply(x, num_groups, weight, bias, eps)  # y, μ, rstd
    return y


def native(x, num_groups, weight=None, bias=None, eps=EPS):
    return F.group_norm(x, num_groups, weight, bias, eps)


def seed():
    """Not seed 0: check_function draws its upstream gradient δ from seed 0, and with δ = x the input
    gradient vanishes (ĝ = x lies in the span of 1 and x̂ in each group, which ∂J/∂x projects out)."""
    torch.manual_seed(1)


def leaf(*shape, dtype=f64):
    return torch.randn(shape, dtype=dtype).requires_grad_()


def arguments(shape, num_groups, affine, dtype=f64):
    """(x, num_groups, weight, bias) with x of ``shape`` (N, C, *)."""
    has_weight, has_bias = AFFINE[affine]
    channels = shape[1]
    return (
        leaf(*shape, dtype=dtype),
        num_groups,
        leaf(channels, dtype=dtype) if has_weight else None,
        leaf(channels, dtype=dtype) if has_bias else None,
    )


# (shape of x, num_groups): one group, a group per channel, groups in between; 2-d to 5-d; empty batches.
CASES = {
    "one group (layer norm over C, H, W)": ((4, 6, 3, 3), 1),
    "a group per channel (instance norm)": ((4, 6, 3, 3), 6),
    "groups in between": ((4, 6, 3, 3), 3),
    "2-d input (N, C)": ((5, 6), 2),
    "3-d input": ((3, 6, 5), 2),
    "5-d input": ((2, 4, 2, 3, 2), 2),
    "one sample": ((1, 6, 2, 2), 3),
    "empty batch": ((0, 6, 3, 3), 3),
    "empty batch, 2-d": ((0, 6), 3),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("case", CASES)
def test_group_norm_matches_native(case, affine, dtype):
    seed()
    shape, num_groups = CASES[case]
    check_function(group_norm, native, *arguments(shape, num_groups, affine, dtype)).assert_ok()


LAYOUTS = {
    "contiguous": lambda x: x,
    "channels last": lambda x: x.to(memory_format=torch.channels_last),
    "channels last, every other column": lambda x: torch.cat([x, x], 3).to(memory_format=torch.channels_last)[..., ::2],
    "transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("dtype", [*DTYPES, torch.bfloat16], ids=str)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_output_is_natives_to_the_bit(layout, affine, dtype):
    seed()
    x, num_groups, weight, bias = (
        a.detach() if isinstance(a, torch.Tensor) else a for a in arguments((4, 6, 5, 3), 3, affine, dtype)
    )
    x = LAYOUTS[layout](x * 3 + 1)
    assert torch.equal(TF.group_norm(x, num_groups, weight, bias), native(x, num_groups, weight, bias))


@pytest.mark.parametrize("case", CASES)
def test_the_outputs_of_every_case_are_natives_to_the_bit(case):
    seed()
    shape, num_groups = CASES[case]
    x, _, weight, bias = (a.detach() if isinstance(a, torch.Tensor) else a for a in arguments(shape, 1, "affine"))
    assert torch.equal(group_norm(x, num_groups, weight, bias), native(x, num_groups, weight, bias))


@given(
    n=st.integers(0, 4),
    groups=st.integers(1, 3),
    channels_per_group=st.integers(1, 3),
    positions=st.lists(st.integers(1, 4), max_size=3),
    affine=st.sampled_from(list(AFFINE)),
    dtype=st.sampled_from(DTYPES),
)
def test_group_norm_matches_native_for_any_shape(n, groups, channels_per_group, positions, affine, dtype):
    group_size = channels_per_group
    for size in positions:
        group_size *= size
    # D ≥ 3: for D ≤ 2, x̂ is ±1 or 0 whatever x, ∂J/∂x is ε's tiny effect, and both sides round it differently.
    if group_size < 3:
        return
    seed()
    shape = (n, groups * channels_per_group, *positions)
    check_function(group_norm, native, *arguments(shape, groups, affine, dtype)).assert_ok()


def test_one_element_per_group_gives_the_exact_zero_gradient():
    # y = β whatever x and γ: the gradients of x and γ are exactly zero. Native's kernel returns rounding noise.
    seed()
    x, _, weight, bias = arguments((6, 4), 4, "affine")
    group_norm(x * 3 + 1, 4, weight, bias).backward(torch.randn(6, 4, dtype=f64))
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(weight.grad, torch.zeros_like(weight))


GRADCHECK_CASES = {
    "groups in between, 4-d": lambda: arguments((3, 4, 2, 3), 2, "affine"),
    "one group, 3-d": lambda: arguments((2, 4, 3), 1, "affine"),
    "a group per channel, 4-d": lambda: arguments((2, 3, 2, 2), 3, "affine"),
    "2-d input": lambda: arguments((3, 6), 2, "affine"),
    "no affine": lambda: arguments((3, 4, 3), 2, "no affine"),
    "weight only": lambda: arguments((3, 4, 3), 2, "weight only"),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    seed()
    assert torch.autograd.gradcheck(group_norm, GRADCHECK_CASES[case]())


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradgradcheck(case):
    seed()
    assert torch.autograd.gradgradcheck(group_norm, GRADCHECK_CASES[case]())


def examples(*shapes):
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def functional_forms(num_groups, affine=True):
    if affine:
        return (
            lambda x, w, b: TF.group_norm(x, num_groups, w, b),
            lambda x, w, b: F.group_norm(x, num_groups, w, b),
        )
    return lambda x: TF.group_norm(x, num_groups), lambda x: F.group_norm(x, num_groups)


# A sample of dimension 0 is (C, *), which group_norm would read as (N, C', *): the cases batched along the
# samples leave vmap and vmap-grad out, and the cases batched along a position dimension (each slice an
# (N, C, W) input of its own) run them. Those leave out empty-batch: over zero positions native's ∂J/∂γ is NaN
# (its kernel's 0/0) where Σ over no elements is 0; the empty batch of samples is the first cases'.
ALONG_SAMPLES = {"skip": ("vmap", "vmap-grad")}
ALONG_POSITIONS = {"batch_dims": (2, None, None), "skip": ("empty-batch",)}
VERIFY_CASES = {  # functional forms, inputs, options, and the properties that do not apply
    "groups in between, 4-d, along the samples": (
        functional_forms(2),
        examples((3, 4, 2, 3), (4,), (4,)),
        ALONG_SAMPLES,
        {"jvp"},
    ),
    "groups in between, 4-d, along a position": (
        functional_forms(2),
        examples((3, 4, 5, 2), (4,), (4,)),
        ALONG_POSITIONS,
        {"jvp"},
    ),
    "a group per channel, 3-d, along a position": (
        functional_forms(4),
        examples((2, 4, 5), (4,), (4,)),
        ALONG_POSITIONS,
        {"jvp"},
    ),
    "one group, 2-d, no affine, along the samples": (
        functional_forms(1, affine=False),
        examples((5, 6)),
        ALONG_SAMPLES,
        {"jvp", "needs-input-grad"},
    ),
}


@pytest.mark.parametrize("case", VERIFY_CASES)
def test_torchbp_verify_passes(case):
    (fn, reference), inputs, options, not_applicable = VERIFY_CASES[case]
    report = torchbp.verify(fn, reference, *inputs, **options, compile_backend="aot_eager")
    report.assert_ok()
    assert {row.name for row in report.rows if row.status == "not applicable"} == {
        *not_applicable,
        *CUSTOM_OP_PROPERTIES,
    }, report


# -- what the backward keeps ---------------------------------------------------------------


@pytest.mark.parametrize("wanted, saved", SAVED_BY_A_NORMALISATION, ids=str)
def test_saves_only_what_its_backward_reads(wanted, saved):
    tensors = {"x": torch.randn(5, 4, 3), "weight": torch.randn(4), "bias": torch.randn(4)}
    for name, t in tensors.items():
        t.requires_grad_(name in wanted)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        _, mean, rstd = GroupNormFunction.apply(tensors["x"], 2, tensors["weight"], tensors["bias"], EPS)
    tensors.update({"μ": mean, "rstd": rstd})
    assert [next(name for name, t in tensors.items() if t is k) for k in kept] == saved


def test_returns_natives_three_tensors_and_reads_its_statistics_back():
    x, weight, bias = leaf(6, 4, 5), leaf(4), leaf(4)
    ours = GroupNormFunction.apply(x, 2, weight, bias, EPS)
    theirs = torch.native_group_norm(x, weight, bias, 6, 4, 5, 2, EPS)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [t.requires_grad for t in ours] == [True, False, False]  # μ and rstd get no gradient, as native's

    # The backward reads x̂ from the saved μ and rstd: shifted statistics give a wrong gradient.
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t + 0.5 if t.shape == (6, 2) else t):
        (grad_wrong,) = torch.autograd.grad(GroupNormFunction.apply(x, 2, weight, bias, EPS)[0].sum(), x)
    (grad_right,) = torch.autograd.grad(ours[0].sum(), x)
    torch.testing.assert_close(grad_right, torch.autograd.grad(theirs[0].sum(), x)[0])
    assert not torch.allclose(grad_wrong, grad_right)


# -- planted bugs: the checks above fail on a wrong formula ----------------------------------


def _mean(t, over=OVER_D):
    return t.mean(over, keepdim=True)


def _three_terms(g_hat, x_hat, rstd, over=OVER_D):
    return rstd * (g_hat - _mean(g_hat, over) - x_hat * _mean(g_hat * x_hat, over))


# Each a wrong gradient from the grouped (n, g, C/G, s) terms δ, ĝ, x̂ and rstd: {"x" | "weight" | "bias": ...}.
PLANTED = {
    "∂J/∂x without − mean_d(ĝ)": lambda d, g_hat, x_hat, rstd: {"x": rstd * (g_hat - x_hat * _mean(g_hat * x_hat))},
    "∂J/∂x without − x̂ · mean_d(ĝ ⊙ x̂)": lambda d, g_hat, x_hat, rstd: {"x": rstd * (g_hat - _mean(g_hat))},
    "∂J/∂x without the factor rstd": lambda d, g_hat, x_hat, rstd: {"x": _three_terms(g_hat, x_hat, rstd) / rstd},
    "∂J/∂x from δ, γ forgotten": lambda d, g_hat, x_hat, rstd: {"x": _three_terms(d, x_hat, rstd)},
    "∂J/∂x with means over the whole sample, not its group": lambda d, g_hat, x_hat, rstd: {
        "x": _three_terms(g_hat, x_hat, rstd, over=(1, 2, 3))
    },
    "∂J/∂x with means over each channel, not its group": lambda d, g_hat, x_hat, rstd: {
        "x": _three_terms(g_hat, x_hat, rstd, over=(3,))
    },
    "∂J/∂γ as Σ δ, x̂ forgotten": lambda d, g_hat, x_hat, rstd: {"weight": d.sum((0, 3))},
    "∂J/∂γ_c summed over all its group's channels, not its own": lambda d, g_hat, x_hat, rstd: {
        "weight": (d * x_hat).sum((0, 2, 3))[:, None].expand(d.shape[1:3])
    },
    "∂J/∂β as a mean over samples": lambda d, g_hat, x_hat, rstd: {"bias": d.mean(0).sum(-1)},
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_a_planted_wrong_formula_is_caught(monkeypatch, mistake):
    right = group_norm_module.group_norm_backward

    def wrong(delta, x, mean, rstd, weight, num_groups, eps, *needs):
        grads = dict(zip(("x", "weight", "bias"), right(delta, x, mean, rstd, weight, num_groups, eps, *needs)))
        x_hat, rstd = normalize(grouped(x, num_groups), eps)
        d = grouped(delta, num_groups)
        terms = PLANTED[mistake](d, d * weight.reshape(num_groups, -1, 1), x_hat, rstd)
        grads.update({name: t.reshape(grads[name].shape) for name, t in terms.items()})
        return grads["x"], grads["weight"], grads["bias"]

    monkeypatch.setattr(group_norm_module, "group_norm_backward", wrong)
    seed()
    report = check_function(group_norm, native, *arguments((5, 6, 3, 2), 3, "affine"))
    assert not report.ok, report


# -- bad input -------------------------------------------------------------------------------

BAD_INPUTS = {
    "channels not divisible by num_groups": (
        lambda: group_norm(torch.randn(2, 6, 3), 4),
        torchbp.ShapeError,
        r"expected num_groups to divide the 6 channels, got num_groups=4",
    ),
    "weight of the wrong length": (
        lambda: group_norm(torch.randn(2, 6, 3), 3, torch.randn(5)),
        torchbp.ShapeError,
        r"weight of shape \(6,\).*\(2, 6, 3\), got weight \(5,\)",
    ),
    "bias of the wrong shape": (
        lambda: group_norm(torch.randn(2, 6, 3), 3, None, torch.randn(6, 1)),
        torchbp.ShapeError,
        r"bias of shape \(6,\).*got bias \(6, 1\)",
    ),
    "1-d input": (lambda: group_norm(torch.randn(6), 3), torchbp.ShapeError, r"at least 2-d, got input \(6,\)"),
    "one sample of one value per group": (
        lambda: group_norm(torch.randn(1, 4), 4),
        torchbp.ShapeError,
        r"more than 1 value.*input \(1, 4\) with num_groups=4",
    ),
    "num_groups zero": (lambda: group_norm(torch.randn(2, 6), 0), torchbp.ArgumentError, r"got num_groups=0"),
    "num_groups negative": (lambda: group_norm(torch.randn(2, 6), -3), torchbp.ArgumentError, r"got num_groups=-3"),
    "num_groups a float": (lambda: group_norm(torch.randn(2, 6), 3.0), TypeError, r"num_groups.*int, got 3\.0"),
    "eps a tensor": (lambda: group_norm(torch.randn(2, 6), 3, eps=torch.tensor(1e-5)), TypeError, r"eps.*Tensor"),
    "integer input": (
        lambda: group_norm(torch.ones(2, 6, dtype=torch.int64), 3),
        torchbp.DTypeError,
        r"input.*torch\.int64",
    ),
    "weight of another dtype": (
        lambda: group_norm(torch.randn(2, 6), 3, torch.randn(6, dtype=f64)),
        torchbp.DTypeError,
        r"weight.*torch\.float32.*torch\.float64",
    ),
    "weight on another device": (
        lambda: group_norm(torch.randn(2, 6), 3, torch.randn(6, device="meta")),
        torchbp.DeviceError,
        r"cpu.*meta",
    ),
    "input not a tensor": (lambda: group_norm([[1.0, 2.0]], 1), TypeError, r"torch\.Tensor.*list"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call()


NATIVE_REFUSES = {  # the same inputs, natively
    "channels not divisible by num_groups": lambda: native(torch.randn(2, 6, 3), 4),
    "weight of the wrong length": lambda: native(torch.randn(2, 6, 3), 3, torch.randn(5)),
    "1-d input": lambda: native(torch.randn(6), 3),
    "one sample of one value per group": lambda: native(torch.randn(1, 4), 4),
    "num_groups negative": lambda: native(torch.randn(2, 6), -3),
}


@pytest.mark.parametrize("case", NATIVE_REFUSES)
def test_what_native_refuses_raises_an_error_of_natives_type(case):
    with pytest.raises(Exception) as theirs:
        NATIVE_REFUSES[case]()
    with pytest.raises(type(theirs.value)):
        BAD_INPUTS[case][0]()


# -- the module and the functional form --------------------------------------------------------

CONSTRUCTORS = {
    "affine": dict(num_groups=3, num_channels=6),
    "no affine": dict(num_groups=2, num_channels=4, affine=False),
    "no bias": dict(num_groups=1, num_channels=4, bias=False),
    "eps, float64": dict(num_groups=4, num_channels=4, eps=1e-3, dtype=f64),
}


@pytest.mark.parametrize("case", CONSTRUCTORS)
def test_the_module_is_a_drop_in_for_every_constructor(case):
    torch.manual_seed(0)
    kwargs = CONSTRUCTORS[case]
    ours, theirs = torchbp.nn.GroupNorm(**kwargs), torch.nn.GroupNorm(**kwargs)
    assert isinstance(ours, torch.nn.GroupNorm) and ours.extra_repr() == theirs.extra_repr()
    assert repr(ours).startswith("torchbp.GroupNorm(")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    converted = torchbp.convert(theirs)
    assert type(converted) is torchbp.nn.GroupNorm  # convert refuses no instance of native's: nothing is left native
    x = torch.randn(3, kwargs["num_channels"], 4, dtype=kwargs.get("dtype", f32))
    assert torch.equal(converted(x), theirs(x))


def test_the_module_refuses_at_construction_what_native_refuses():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        torchbp.nn.GroupNorm(4, 6)


def test_a_low_precision_input_with_float32_parameters_is_normalised_as_natively():
    """A Conv2d's bfloat16 output under autocast, into a GroupNorm whose parameters are float32."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Flatten())
    x = torch.randn(3, 2, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = model(x), torchbp.convert(model)(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(got, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torchbp.check_model(model, torch.nn.MSELoss(), x, torch.randn(3, 36), rtol=2e-2).assert_ok()


def model_with_group_norm(**kwargs):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.GroupNorm(3, 6, **kwargs), torch.nn.Tanh(), torch.nn.Flatten()
    ).double()


def images(n=5):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 4, 4, generator=generator, dtype=f64)


@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"bias": False}], ids=str)
def test_convert_replaces_it_and_check_model_says_match(kwargs):
    model = model_with_group_norm(**kwargs)
    assert type(torchbp.convert(model)[1]) is torchbp.nn.GroupNorm
    report = torchbp.check_model(model, torch.nn.MSELoss(), images(), torch.randn(5, 96, dtype=f64))
    report.assert_ok()
    assert "GroupNorm" in report.layers.split(";")[0], report.layers


# -- per-sample gradients --------------------------------------------------------------------

PER_SAMPLE_MODELS = {
    "4-d": (model_with_group_norm, images),
    "4-d, no bias": (lambda: model_with_group_norm(bias=False), images),
    "2-d (N, C)": (
        lambda: torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.GroupNorm(2, 6), torch.nn.Tanh()).double(),
        lambda n=5: torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=f64),
    ),
    "3-d, a group per channel": (
        lambda: torch.nn.Sequential(
            torch.nn.Linear(3, 12), torch.nn.Unflatten(1, (4, 3)), torch.nn.GroupNorm(4, 4), torch.nn.Flatten()
        ).double(),
        lambda n=5: torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=f64),
    ),
}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", PER_SAMPLE_MODELS)
def test_per_sample_gradients_are_torch_funcs(case, reduction):
    make_model, make_inputs = PER_SAMPLE_MODELS[case]
    model, x = make_model(), make_inputs()
    target = torch.randn_like(model(x))
    loss_fn = torch.nn.MSELoss(reduction=reduction)
    expected = per_sample_by_torch_func(model, loss_fn, x, target)
    grads = torchbp.per_sample_grads(model, loss_fn, x, target)
    assert list(grads) == list(expected)
    for key in expected:
        row = compare_tensors(key, grads[key], expected[key])
        assert row.ok, row
    norms = torchbp.per_sample_grad_norms(model, loss_fn, x, target)
    row = compare_tensors("norms", norms, torch.sqrt(sum(g.flatten(1).square().sum(1) for g in expected.values())))
    assert row.ok, row


PLANTED_PER_SAMPLE = {
    "weight without x̂": ("per_sample_weight_grads", lambda delta, a_prev, groups, eps, out=None: delta.sum((2, 3))),
    "weight summed over the samples too": (
        "per_sample_weight_grads",
        lambda delta, a_prev, groups, eps, out=None: (
            (delta * F.group_norm(a_prev, groups, eps=eps)).sum((0, 2, 3)).expand(delta.shape[:2])
        ),
    ),
    "bias twice": ("per_sample_bias_grads", lambda delta, out=None: delta.sum((2, 3)) * 2),
}


@pytest.mark.parametrize("mistake", PLANTED_PER_SAMPLE)
def test_a_planted_wrong_per_sample_rule_is_caught(monkeypatch, mistake):
    name, wrong = PLANTED_PER_SAMPLE[mistake]
    monkeypatch.setattr(group_norm_module, name, wrong)
    with pytest.raises(AssertionError):
        test_per_sample_gradients_are_torch_funcs("4-d", "sum")


def per_sample_call(n, shape=(6, 2, 3), num_groups=3):
    """(δ, a_prev) of one call, δ by native autograd of a cost nonlinear in y."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=generator, dtype=f64)
    y = native(x, num_groups).requires_grad_()
    (delta,) = torch.autograd.grad(y.tanh().sum(), y)
    return delta, x


@pytest.mark.parametrize("shape", [(6, 2, 3), (6,)], ids=["4-d", "2-d"])
def test_an_empty_batch_gives_empty_per_sample_grads(shape):
    delta, x = per_sample_call(0, shape)
    assert per_sample_weight_grads(delta, x, 3, EPS).shape == (0, 6)
    assert per_sample_bias_grads(delta).shape == (0, 6)
    assert per_sample_weight_grad_norms_squared(delta, x, 3, EPS).shape == (0,)
    assert per_sample_bias_grad_norms_squared(delta).shape == (0,)


@pytest.mark.parametrize("shape", [(6, 2, 3), (6,)], ids=["4-d", "2-d"])
def test_out_receives_the_per_sample_grads(shape):
    delta, x = per_sample_call(5, shape)
    buffers = {name: torch.full((5, 6), float("nan"), dtype=f64) for name in ("weight", "bias")}
    got = {
        "weight": per_sample_weight_grads(delta, x, 3, EPS, out=buffers["weight"]),
        "bias": per_sample_bias_grads(delta, out=buffers["bias"]),
    }
    expected = {"weight": per_sample_weight_grads(delta, x, 3, EPS), "bias": per_sample_bias_grads(delta)}
    for name in buffers:
        assert got[name] is buffers[name] and torch.equal(got[name], expected[name])


def test_per_sample_bias_grads_do_not_alias_delta():
    # A layer used twice adds its second call's gradients into the first's in place.
    delta, _ = per_sample_call(5, (6,))
    per_sample_bias_grads(delta).add_(1)
    assert not torch.equal(per_sample_bias_grads(delta), delta + 1)
