"""LayerNormFunction against native layer_norm: values, gradients, transforms, bad input, per-sample gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import torchbp
from torchbp.check import check_function
from torchbp.compare import compare_tensors
from torchbp.layers import layer_norm as layer_norm_module
from torchbp.layers.layer_norm import (
    LayerNormFunction,
    normalize,
    per_sample_bias_grad_norms_squared,
    per_sample_bias_grads,
    per_sample_weight_grad_norms_squared,
    per_sample_weight_grads,
)
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES

from conftest import SAVED_BY_A_NORMALISATION

EPS = 1e-5
DTYPES = [torch.float32, torch.float64]
AFFINE = {"affine": (True, True), "no affine": (False, False), "weight only": (True, False)}


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=EPS):
    y, _, _ = LayerNormFunction.apply(x, normalized_shape, weight, bias, eps)  # y, μ, rstd
    return y


def native(x, normalized_shape, weight=None, bias=None, eps=EPS):
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def leaf(*shape, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype).requires_grad_()


def seed():
    """Not seed 0: check_function draws its upstream gradient g from seed 0, and with g = x the input
    gradient vanishes (ĝ = x lies in the span of 1 and x̂, which ∂J/∂x projects out), hiding any formula."""
    torch.manual_seed(1)


def arguments(leading, normalized_shape, affine, dtype=torch.float64):
    """(x, normalized_shape, weight, bias) with x of shape (*leading, *normalized_shape)."""
    has_weight, has_bias = AFFINE[affine]
    return (
        leaf(*leading, *normalized_shape, dtype=dtype),
        normalized_shape,
        leaf(*normalized_shape, dtype=dtype) if has_weight else None,
        leaf(*normalized_shape, dtype=dtype) if has_bias else None,
    )


# (leading, normalized_shape): a batch, several leading dimensions, one sample with no sample
# dimension (what torch.func shows per sample), empty batches, two normalized dimensions.
SHAPES = [
    ((5,), (4,)),
    ((3, 4), (6,)),
    ((), (4,)),
    ((0,), (4,)),
    ((2, 0), (3,)),
    ((2,), (3, 4)),
    ((2, 3), (2, 5)),
    ((0,), (3, 4)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("leading, normalized_shape", SHAPES, ids=str)
def test_layer_norm_matches_native(leading, normalized_shape, affine, dtype):
    seed()
    check_function(layer_norm, native, *arguments(leading, normalized_shape, affine, dtype)).assert_ok()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("leading, normalized_shape", [SHAPES[i] for i in (0, 2, 3, 6)], ids=str)
def test_the_output_is_natives_to_the_bit(leading, normalized_shape, affine, dtype):
    seed()
    x, shape, weight, bias = (
        a.detach() if isinstance(a, torch.Tensor) else a for a in arguments(leading, normalized_shape, affine, dtype)
    )
    assert torch.equal(layer_norm(x, shape, weight, bias), native(x, shape, weight, bias))


@given(
    leading=st.lists(st.integers(0, 4), max_size=3),
    # D ≥ 3: for D ≤ 2, x̂ is ±1 or 0 whatever x, ∂J/∂x is ε's tiny effect, and both sides round it
    # differently (the tests below).
    normalized_shape=st.lists(st.integers(1, 4), min_size=1, max_size=2).filter(lambda s: math.prod(s) >= 3),
    affine=st.sampled_from(list(AFFINE)),
    dtype=st.sampled_from(DTYPES),
)
def test_layer_norm_matches_native_for_any_shape(leading, normalized_shape, affine, dtype):
    seed()
    check_function(layer_norm, native, *arguments(leading, tuple(normalized_shape), affine, dtype)).assert_ok()


def test_two_normalized_elements_match_native_in_float64():
    # ∂J/∂x is of order ε / |x₁ − x₂|³ · g: tiny, the difference of O(1) terms. float64 resolves it, float32 not.
    seed()
    check_function(layer_norm, native, *arguments((6,), (2,), "affine")).assert_ok()


def test_one_normalized_element_gives_the_exact_zero_gradient():
    # y = β whatever x and γ: the gradients are exactly zero. Native's kernel returns rounding noise here.
    seed()
    x, shape, weight, bias = arguments((6,), (1,), "affine")
    layer_norm(x * 3 + 1, shape, weight, bias).backward(torch.randn(6, 1, dtype=torch.float64))
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.autograd.gradcheck(layer_norm, (x, shape, weight, bias))


GRADCHECK_CASES = {
    "affine": lambda: arguments((3,), (4,), "affine"),
    "no affine": lambda: arguments((3,), (4,), "no affine"),
    "weight only": lambda: arguments((3,), (4,), "weight only"),
    "two normalized dimensions, 3-d input": lambda: arguments((2, 2), (2, 3), "affine"),
    "one sample, no sample dimension": lambda: arguments((), (5,), "affine"),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    seed()
    assert torch.autograd.gradcheck(layer_norm, GRADCHECK_CASES[case]())


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradgradcheck(case):
    seed()
    assert torch.autograd.gradgradcheck(layer_norm, GRADCHECK_CASES[case]())


def test_jacrev_of_jacrev_matches_natives_hessian():
    # The second derivative runs through μ and rstd, which the backward recomputes differentiably.
    seed()
    weight, bias, upstream = leaf(5), leaf(5), torch.randn(2, 5, dtype=torch.float64)
    x = torch.randn(2, 5, dtype=torch.float64)

    def cost(norm):
        return lambda x: (norm(x, (5,), weight, bias) * upstream).sum()

    hessian = torch.func.jacrev(torch.func.jacrev(cost(layer_norm)))(x)  # reverse over reverse: no jvp here
    torch.testing.assert_close(hessian, torch.func.hessian(cost(native))(x))


def examples(*shapes):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=generator) for shape in shapes]


VERIFY_CASES = {  # inputs, and the properties that do not apply
    "affine, two normalized dimensions": (lambda: (*examples((3, 2, 4)), (2, 4), *examples((2, 4), (2, 4))), {"jvp"}),
    "no affine": (lambda: (*examples((4, 5)), (5,), None, None), {"jvp", "needs-input-grad"}),
    "weight only": (lambda: (*examples((4, 5)), (5,), *examples((5,)), None), {"jvp"}),
}


@pytest.mark.parametrize("case", VERIFY_CASES)
def test_torchbp_verify_passes(case):
    make_inputs, not_applicable = VERIFY_CASES[case]
    report = torchbp.verify(  # the Function returns (y, μ, rstd), as torch.native_layer_norm
        LayerNormFunction.apply,
        torch.native_layer_norm,
        *make_inputs(),
        EPS,
        skip=("autocast",),
        compile_backend="aot_eager",
    )
    report.assert_ok()
    not_applicable = {*not_applicable, *CUSTOM_OP_PROPERTIES}
    assert {row.name for row in report.rows if row.status == "not applicable"} == not_applicable, report


# -- what the backward keeps ---------------------------------------------------------------


@pytest.mark.parametrize("wanted, saved", SAVED_BY_A_NORMALISATION, ids=str)
def test_saves_only_what_its_backward_reads(wanted, saved):
    tensors = {"x": torch.randn(5, 4), "weight": torch.randn(4), "bias": torch.randn(4)}
    for name, t in tensors.items():
        t.requires_grad_(name in wanted)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        _, mean, rstd = LayerNormFunction.apply(tensors["x"], (4,), tensors["weight"], tensors["bias"], EPS)
    tensors.update({"μ": mean, "rstd": rstd})
    assert [next(name for name, t in tensors.items() if t is k) for k in kept] == saved


def test_returns_natives_three_tensors_and_reads_its_statistics_back():
    x, weight, bias = leaf(6, 5), leaf(5), leaf(5)
    ours = LayerNormFunction.apply(x, (5,), weight, bias, EPS)
    theirs = torch.native_layer_norm(x, (5,), weight, bias, EPS)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [t.requires_grad for t in ours] == [True, False, False]  # μ and rstd get no gradient, as native's

    # The backward reads x̂ from the saved μ and rstd: shifted statistics give a wrong gradient.
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t + 0.5 if t.shape == (6, 1) else t):
        (grad_wrong,) = torch.autograd.grad(LayerNormFunction.apply(x, (5,), weight, bias, EPS)[0].sum(), x)
    (grad_right,) = torch.autograd.grad(ours[0].sum(), x)
    torch.testing.assert_close(grad_right, torch.autograd.grad(theirs[0].sum(), x)[0])
    assert not torch.allclose(grad_wrong, grad_right)


# -- planted bugs: the checks above fail on a wrong formula ----------------------------------


def _mean_d(t):
    return t.mean(-1, keepdim=True)


PLANTED = {  # a wrong (∂J/∂x, ∂J/∂γ, ∂J/∂β) from the right terms, for x of shape (n, D)
    "∂J/∂x without − mean_d(ĝ)": lambda dx, dw, db, g, g_hat, x_hat, rstd: (dx + rstd * _mean_d(g_hat), dw, db),
    "∂J/∂x without − x̂ · mean_d(ĝ ⊙ x̂)": lambda dx, dw, db, g, g_hat, x_hat, rstd: (
        dx + rstd * x_hat * _mean_d(g_hat * x_hat),
        dw,
        db,
    ),
    "∂J/∂x without the factor rstd": lambda dx, dw, db, g, g_hat, x_hat, rstd: (dx / rstd, dw, db),
    "∂J/∂x from g, γ forgotten": lambda dx, dw, db, g, g_hat, x_hat, rstd: (
        rstd * (g - _mean_d(g) - x_hat * _mean_d(g * x_hat)),
        dw,
        db,
    ),
    "∂J/∂x with sums over d for means": lambda dx, dw, db, g, g_hat, x_hat, rstd: (
        rstd * (g_hat - _mean_d(g_hat) * g.shape[-1] - x_hat * _mean_d(g_hat * x_hat) * g.shape[-1]),
        dw,
        db,
    ),
    "∂J/∂γ as Σ g, x̂ forgotten": lambda dx, dw, db, g, g_hat, x_hat, rstd: (dx, g.sum(0), db),
    "∂J/∂γ from x − μ, rstd forgotten": lambda dx, dw, db, g, g_hat, x_hat, rstd: (dx, (g * x_hat / rstd).sum(0), db),
    "∂J/∂β as a mean over samples": lambda dx, dw, db, g, g_hat, x_hat, rstd: (dx, dw, g.mean(0)),
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_a_planted_wrong_formula_is_caught(monkeypatch, mistake):
    right = layer_norm_module.layer_norm_backward

    def wrong(g, x, mean, rstd, weight, normalized_ndim, eps, *needs):
        x_hat, rstd = normalize(x, normalized_ndim, eps)
        return PLANTED[mistake](
            *right(g, x, mean, rstd, weight, normalized_ndim, eps, *needs), g, g * weight, x_hat, rstd
        )

    monkeypatch.setattr(layer_norm_module, "layer_norm_backward", wrong)
    seed()
    report = check_function(layer_norm, native, *arguments((5,), (4,), "affine"))
    assert not report.ok, report


# -- bad input -------------------------------------------------------------------------------

f32, f64 = torch.float32, torch.float64

BAD_INPUTS = {
    "input's last dimensions differ from normalized_shape": (
        lambda: layer_norm(torch.randn(5, 3), (4,)),
        torchbp.ShapeError,
        r"\(\*, 4\).*\(4,\).*\(5, 3\)",
    ),
    "input with fewer dimensions than normalized_shape": (
        lambda: layer_norm(torch.randn(4), (3, 4)),
        torchbp.ShapeError,
        r"\(\*, 3, 4\).*got input \(4,\)",
    ),
    "weight of the wrong shape": (
        lambda: layer_norm(torch.randn(5, 4), (4,), torch.randn(3)),
        torchbp.ShapeError,
        r"weight.*\(4,\).*\(3,\)",
    ),
    "bias of the wrong shape": (
        lambda: layer_norm(torch.randn(5, 4), (4,), None, torch.randn(4, 1)),
        torchbp.ShapeError,
        r"bias.*\(4,\).*\(4, 1\)",
    ),
    "empty normalized_shape": (
        lambda: layer_norm(torch.randn(5, 4), ()),
        torchbp.ShapeError,
        r"at least one dimension",
    ),
    "normalized_shape an int": (lambda: layer_norm(torch.randn(5, 4), 4), TypeError, r"tuple of ints, got 4"),
    "normalized_shape of floats": (
        lambda: layer_norm(torch.randn(5, 4), (4.0,)),
        TypeError,
        r"tuple of ints, got \(4\.0,\)",
    ),
    "eps a tensor": (lambda: layer_norm(torch.randn(5, 4), (4,), eps=torch.tensor(1e-5)), TypeError, r"eps.*Tensor"),
    "integer input": (
        lambda: layer_norm(torch.ones(5, 4, dtype=torch.int64), (4,)),
        torchbp.DTypeError,
        r"torch\.int64",
    ),
    "weight of another dtype": (
        lambda: layer_norm(torch.randn(5, 4), (4,), torch.randn(4, dtype=f64)),
        torchbp.DTypeError,
        r"weight.*torch\.float32.*torch\.float64",
    ),
    "weight on another device": (
        lambda: layer_norm(torch.randn(5, 4), (4,), torch.randn(4, device="meta")),
        torchbp.DeviceError,
        r"cpu.*meta",
    ),
    "input not a tensor": (lambda: layer_norm([[1.0, 2.0]], (2,)), TypeError, r"torch\.Tensor.*list"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call()


# -- per-sample gradients --------------------------------------------------------------------


def per_sample_data(n, middle, normalized_shape, dtype):
    generator = torch.Generator().manual_seed(1)
    draw = lambda *shape: torch.randn(shape, generator=generator, dtype=f64).to(dtype)  # noqa: E731
    x, target = draw(n, *middle, *normalized_shape), draw(n, *middle, *normalized_shape)
    return x, target, draw(*normalized_shape), draw(*normalized_shape)


def sample_cost(x, target, weight, bias, normalized_shape):
    """A cost that is a sum over samples, nonlinear in the output: δ depends on y."""
    return (native(x, normalized_shape, weight, bias) - target).square().sum()


def delta_of(x, target, weight, bias, normalized_shape):
    """δ = ∂J/∂y of the whole batch, by native autograd."""
    y = native(x, normalized_shape, weight, bias).detach().requires_grad_()
    (delta,) = torch.autograd.grad((y - target).square().sum(), y)
    return delta


def loop_reference(x, target, weight, bias, normalized_shape):
    """One native backward per sample, each on a batch of one."""
    grads = {"weight": [], "bias": []}
    for n in range(len(x)):
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        sample_cost(x[n : n + 1], target[n : n + 1], w, b, normalized_shape).backward()
        grads["weight"].append(w.grad)
        grads["bias"].append(b.grad)
    return {name: torch.stack(g) for name, g in grads.items()}


def func_reference(x, target, weight, bias, normalized_shape):
    """torch.func.vmap(torch.func.grad(...)) of the native cost, one sample at a time."""

    def cost(w, b, x_n, target_n):
        return sample_cost(x_n, target_n, w, b, normalized_shape)

    grad_w, grad_b = torch.func.vmap(torch.func.grad(cost, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        weight, bias, x, target
    )
    return {"weight": grad_w, "bias": grad_b}


PER_SAMPLE_CASES = [
    dict(n=n, middle=middle, normalized_shape=shape, dtype=dtype)
    for n in (5, 1)
    for middle in ((), (3,), (2, 3))
    for shape in ((4,), (2, 3))
    for dtype in DTYPES
]


def per_sample_id(case):
    return f"N{case['n']}-middle{case['middle']}-normalized{case['normalized_shape']}-{str(case['dtype'])[6:]}"


def ours(x, target, weight, bias, normalized_shape):
    delta = delta_of(x, target, weight, bias, normalized_shape)
    return {
        "weight": per_sample_weight_grads(delta, x, normalized_shape, EPS),
        "bias": per_sample_bias_grads(delta, normalized_shape),
    }


@pytest.mark.parametrize("case", PER_SAMPLE_CASES, ids=per_sample_id)
@pytest.mark.parametrize("reference", [loop_reference, func_reference], ids=["loop", "torch.func"])
def test_per_sample_grads_match_reference(case, reference):
    data = per_sample_data(case["n"], case["middle"], case["normalized_shape"], case["dtype"])
    mine, theirs = ours(*data, case["normalized_shape"]), reference(*data, case["normalized_shape"])
    for name in theirs:
        row = compare_tensors(name, mine[name], theirs[name])
        assert row.ok, row


@pytest.mark.parametrize("case", PER_SAMPLE_CASES, ids=per_sample_id)
def test_per_sample_grad_norms_are_the_norms_of_the_references(case):
    x, target, weight, bias = per_sample_data(case["n"], case["middle"], case["normalized_shape"], case["dtype"])
    shape = case["normalized_shape"]
    delta = delta_of(x, target, weight, bias, shape)
    reference = loop_reference(x, target, weight, bias, shape)
    norms = {
        "weight": per_sample_weight_grad_norms_squared(delta, x, shape, EPS),
        "bias": per_sample_bias_grad_norms_squared(delta, shape),
    }
    for name, norm in norms.items():
        row = compare_tensors(name, norm, reference[name].square().flatten(1).sum(1))
        assert row.ok, row


@pytest.mark.parametrize("middle", [(), (3,)], ids=["no middle", "middle"])
def test_an_empty_batch_gives_empty_per_sample_grads(middle):
    x, target, weight, bias = per_sample_data(0, middle, (2, 3), f64)
    delta = delta_of(x, target, weight, bias, (2, 3))
    assert per_sample_weight_grads(delta, x, (2, 3), EPS).shape == (0, 2, 3)
    assert per_sample_bias_grads(delta, (2, 3)).shape == (0, 2, 3)
    assert per_sample_weight_grad_norms_squared(delta, x, (2, 3), EPS).shape == (0,)
    assert per_sample_bias_grad_norms_squared(delta, (2, 3)).shape == (0,)


@pytest.mark.parametrize("middle", [(), (3,)], ids=["no middle", "middle"])
def test_out_receives_the_per_sample_grads(middle):
    x, target, weight, bias = per_sample_data(5, middle, (4,), f64)
    delta = delta_of(x, target, weight, bias, (4,))
    buffers = {name: torch.full((5, 4), float("nan"), dtype=f64) for name in ("weight", "bias")}
    got = {
        "weight": per_sample_weight_grads(delta, x, (4,), EPS, out=buffers["weight"]),
        "bias": per_sample_bias_grads(delta, (4,), out=buffers["bias"]),
    }
    expected = ours(x, target, weight, bias, (4,))
    for name in buffers:
        assert got[name] is buffers[name] and torch.equal(got[name], expected[name])


def test_per_sample_bias_grads_do_not_alias_delta():
    # A layer used twice adds its second call's gradients into the first's in place.
    delta = torch.randn(5, 4)
    per_sample_bias_grads(delta, (4,)).add_(1)
    assert not torch.equal(per_sample_bias_grads(delta, (4,)), delta + 1)
