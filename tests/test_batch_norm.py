"""BatchNormFunction against native batch_norm: values, gradients, running statistics, transforms, bad input,
the modules, per-sample gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import torchbp
import torchbp.functional as TF
from torchbp.check import check_function
from torchbp.compare import compare_tensors
from torchbp.layers import batch_norm as batch_norm_module
from torchbp.layers.batch_norm import BatchNormFunction, normalize, per_channel
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES

from conftest import SAVED_BY_A_NORMALISATION, per_sample_by_torch_func

EPS = 1e-5
f32, f64, bf16 = torch.float32, torch.float64, torch.bfloat16
DTYPES = [f32, f64]


def seed():
    """Not seed 0: check_function draws its upstream gradient g from seed 0, and with g = x the input
    gradient vanishes in training mode (g lies in the span of 1 and x̂ per channel, which ∂J/∂x projects out)."""
    torch.manual_seed(1)


def leaf(*shape, dtype=f64):
    return torch.randn(shape, dtype=dtype).requires_grad_()


def running_statistics(channels, dtype=f64):
    """A running mean and a running variance away from 0 and 1, so that using them or not shows."""
    return torch.randn(channels, dtype=dtype) * 0.5, torch.rand(channels, dtype=dtype) + 0.5


# -- the functional form against native's --------------------------------------------------------------------------

# (training, running statistics given, weight, bias, momentum): the ways F.batch_norm is called. A module in
# training mode with track_running_stats=False, and one in eval mode without running statistics, both call it
# as "training, no running statistics".
MODES = {
    "training, batch statistics, running ones updated": (True, True, True, True, 0.1),
    "training, no running statistics": (True, False, True, True, 0.1),
    "training, momentum 0.3": (True, True, True, True, 0.3),
    "training, no affine": (True, True, False, False, 0.1),
    "training, weight only": (True, False, True, False, 0.1),
    "eval, running statistics": (False, True, True, True, 0.1),
    "eval, no affine": (False, True, False, False, 0.1),
}

# The shape of x, (N, C, *): BatchNorm1d's two, BatchNorm2d's, a 5-d one (as BatchNorm3d's), one sample of several
# positions, and empty batches (native returns an empty output; the Function special-cases them).
SHAPES = {
    "2-d (N, C)": (5, 4),
    "3-d (N, C, L)": (3, 4, 5),
    "4-d (N, C, H, W)": (3, 4, 2, 3),
    "5-d": (2, 4, 2, 2, 2),
    "one sample, several positions": (1, 4, 2, 3),
    "one sample, 3-d": (1, 4, 5),
    "empty batch": (0, 4, 3),
    "empty batch, 2-d": (0, 4),
    "empty batch, 4-d": (0, 4, 2, 2),
}


def arguments(shape, mode, dtype=f64):
    """(x, running_mean, running_var, weight, bias, training, momentum, eps) as F.batch_norm takes them."""
    training, stats, has_weight, has_bias, momentum = MODES[mode]
    channels = shape[1]
    mean, var = running_statistics(channels, dtype) if stats else (None, None)
    return (
        leaf(*shape, dtype=dtype),
        mean,
        var,
        leaf(channels, dtype=dtype) if has_weight else None,
        leaf(channels, dtype=dtype) if has_bias else None,
        training,
        momentum,
        EPS,
    )


def detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def cloned(args):
    return tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_matches_native(shape, mode, dtype):
    # check_function gives each side copies of the running statistics, so each updates its own.
    seed()
    check_function(TF.batch_norm, F.batch_norm, *arguments(SHAPES[shape], mode, dtype)).assert_ok()


@pytest.mark.parametrize("dtype", [*DTYPES, bf16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_output_and_the_running_statistics_are_natives_to_the_bit(shape, mode, dtype):
    seed()
    args = detached(arguments(SHAPES[shape], mode, f64))
    x = (args[0] * 3 + 1).to(dtype)  # a bfloat16 input beside float32 parameters and statistics, as native allows
    rest = tuple(a.to(f32 if dtype == bf16 else dtype) if isinstance(a, torch.Tensor) else a for a in args[1:])
    ours, theirs = cloned((x, *rest)), cloned((x, *rest))
    assert torch.equal(TF.batch_norm(*ours), F.batch_norm(*theirs))
    for mine, native in zip(ours[1:3], theirs[1:3]):  # the running statistics, written in place in training mode
        assert (mine is None and native is None) or torch.equal(mine, native)


@settings(max_examples=30)
@given(
    n=st.integers(0, 4),
    channels=st.integers(1, 3),
    positions=st.lists(st.integers(1, 3), max_size=2),
    mode=st.sampled_from(list(MODES)),
    dtype=st.sampled_from(DTYPES),
)
def test_batch_norm_matches_native_for_any_shape(n, channels, positions, mode, dtype):
    values = n * math.prod(positions)  # M, per channel
    # Training mode wants M ≥ 3: native refuses M = 1, and for M = 2, x̂ is ±1 whatever x, ∂J/∂x is ε's tiny
    # effect, and both sides round it differently. An empty batch (M = 0) is fine.
    assume(not MODES[mode][0] or values == 0 or values >= 3)
    seed()
    check_function(TF.batch_norm, F.batch_norm, *arguments((n, channels, *positions), mode, dtype)).assert_ok()


def test_one_sample_of_one_value_per_channel_normalises_by_the_running_statistics_in_eval_mode():
    # Training mode refuses it (below); eval mode is an affine map, fine for any batch.
    seed()
    check_function(TF.batch_norm, F.batch_norm, *arguments((1, 4), "eval, running statistics")).assert_ok()


def test_the_hessian_matches_natives():
    # Training mode: the second derivative runs through μ and σ², which the backward recomputes differentiably.
    seed()
    weight, bias, upstream = torch.randn(3, dtype=f64), torch.randn(3, dtype=f64), torch.randn(4, 3, 2, dtype=f64)

    def cost(norm):
        return lambda x: (norm(x, None, None, weight, bias, True) * upstream).sum()

    x = torch.randn(4, 3, 2, dtype=f64)
    hessian = torch.func.jacrev(torch.func.jacrev(cost(TF.batch_norm)))(x)
    torch.testing.assert_close(hessian, torch.func.hessian(cost(F.batch_norm))(x))


# -- gradcheck and gradgradcheck of the Function ---------------------------------------------------------------------


def function_of(shape, training, stats=True, weight=True, bias=True):
    """(fn, inputs) for gradcheck: BatchNormFunction.apply's y as a function of x (and γ, β where given)."""
    channels = shape[1]
    mean, var = running_statistics(channels) if stats else (None, None)
    inputs = [leaf(*shape)] + [leaf(channels) for present in (weight, bias) if present]

    def fn(x, *affine):
        w = affine[0] if weight else None
        b = affine[-1] if bias else None
        return BatchNormFunction.apply(x, mean, var, w, b, training, 0.1, EPS)[0]  # y of (y, μ, rstd)

    return fn, tuple(inputs)


# Training mode writes the running statistics at every evaluation; the output does not read them.
GRADCHECK_CASES = {
    "training, 3-d": lambda: function_of((4, 3, 2), True),
    "training, 2-d, no running statistics": lambda: function_of((5, 3), True, stats=False),
    "training, 4-d, no affine": lambda: function_of((3, 2, 2, 2), True, weight=False, bias=False),
    "training, weight only": lambda: function_of((4, 3, 2), True, bias=False),
    "eval, 3-d": lambda: function_of((4, 3, 2), False),
    "eval, 4-d, no affine": lambda: function_of((2, 3, 2, 2), False, weight=False, bias=False),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    seed()
    assert torch.autograd.gradcheck(*GRADCHECK_CASES[case]())


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradgradcheck(case):
    seed()
    assert torch.autograd.gradgradcheck(*GRADCHECK_CASES[case]())


# -- torchbp.verify --------------------------------------------------------------------------------------------------


def examples(*shapes):
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


# One sample along dimension 0 is (C, *), which batch_norm would read as (N, C', *): every case batches along a
# position dimension instead (each slice an (N, C, …) input of its own), as tests/test_group_norm.py does. verify
# sees no input that a call writes: in eval mode the running statistics are read only (constants of the input:
# nondiff), and in training mode they are None (with them, both sides would write verify's copies in place at every
# call; their update has tests of its own below).
ALONG_A_POSITION = (2, None, None, None, None, None)
VERIFY_CASES = {  # inputs (after x: running_mean, running_var, weight, bias, training), options, not applicable
    "eval, running statistics, 4-d": (
        (*examples((3, 2, 3, 2)), *running_statistics(2, f32), *examples((2,), (2,)), False),
        {"batch_dims": ALONG_A_POSITION, "nondiff": [1, 2]},
        {"jvp"},
    ),
    "training, batch statistics, 4-d": (
        (*examples((3, 2, 3, 2)), None, None, *examples((2,), (2,)), True),
        {"batch_dims": ALONG_A_POSITION},
        {"jvp"},
    ),
    "training, no affine, 3-d": (
        (*examples((3, 2, 4)), None, None, None, None, True),
        {"batch_dims": ALONG_A_POSITION},
        {"jvp", "needs-input-grad"},
    ),
}


@pytest.mark.parametrize("case", VERIFY_CASES)
def test_torchbp_verify_passes(case):
    inputs, options, not_applicable = VERIFY_CASES[case]
    torch.manual_seed(0)  # running_statistics draws from the global generator
    report = torchbp.verify(TF.batch_norm, F.batch_norm, *inputs, **options, compile_backend="aot_eager")
    report.assert_ok()
    assert {row.name for row in report.rows if row.status == "not applicable"} == {
        *not_applicable,
        *CUSTOM_OP_PROPERTIES,
    }, report


# -- what the Function returns and keeps ----------------------------------------------------------------------------


@pytest.mark.parametrize("wanted, saved", SAVED_BY_A_NORMALISATION, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_saves_only_what_its_backward_reads(training, wanted, saved):
    tensors = {"x": torch.randn(5, 4, 3), "weight": torch.randn(4), "bias": torch.randn(4)}
    for name, t in tensors.items():
        t.requires_grad_(name in wanted)
    mean, var = running_statistics(4, f32)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        _, mu, rstd = BatchNormFunction.apply(
            tensors["x"], mean, var, tensors["weight"], tensors["bias"], training, 0.1, EPS
        )
    tensors.update({"μ": mu, "rstd": rstd})
    assert [next(name for name, t in tensors.items() if t is k) for k in kept] == saved


def test_returns_natives_three_tensors_in_training_mode():
    x, weight, bias = leaf(6, 4, 5), leaf(4), leaf(4)
    ours = BatchNormFunction.apply(x, None, None, weight, bias, True, 0.1, EPS)
    theirs = torch.native_batch_norm(x, weight, bias, None, None, True, 0.1, EPS)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [t.requires_grad for t in ours] == [True, False, False]  # μ and rstd get no gradient, as native's


def test_eval_mode_returns_and_reads_the_running_statistics_as_they_stood_at_the_forward():
    x, weight = leaf(6, 3), leaf(3)
    mean, var = running_statistics(3)
    y, mu, rstd = BatchNormFunction.apply(x, mean, var, weight, None, False, 0.1, EPS)
    expected_rstd = torch.rsqrt(var + EPS)
    assert torch.equal(mu, mean) and mu is not mean and torch.equal(rstd, expected_rstd)
    TF.batch_norm(torch.randn(6, 3, dtype=f64), mean, var, training=True)  # a training step writes the buffers
    y.backward(torch.ones_like(y))
    # ∂J/∂x = g γ rstd with the forward's rstd. (Native's backward, on torch 2.13, reads the buffers as they are when
    # it runs, not as its forward read them: its gradient here is not that of the output it returned.)
    torch.testing.assert_close(x.grad, (weight * expected_rstd).expand(6, 3).detach(), rtol=1e-15, atol=0)


# -- the running statistics: modules against native's, and against the formula ----------------------------------

# The modules' constructor arguments, all the ways they choose statistics and update them.
CONSTRUCTORS = {
    "default": {},
    "track_running_stats=False": {"track_running_stats": False},
    "affine=False": {"affine": False},
    "bias=False": {"bias": False},
    "momentum=None (cumulative average)": {"momentum": None},
    "momentum=0.3": {"momentum": 0.3},
    "momentum=1 (an int: the last batch's)": {"momentum": 1},
    "eps=1e-3": {"eps": 1e-3},
}

# (module class name, the shape of one batch after N)
MODULE_INPUTS = {
    "BatchNorm1d, (N, C)": ("BatchNorm1d", (4,)),
    "BatchNorm1d, (N, C, L)": ("BatchNorm1d", (4, 3)),
    "BatchNorm2d, (N, C, H, W)": ("BatchNorm2d", (4, 2, 3)),
}

# Training steps of several batch sizes (an empty batch counts in num_batches_tracked, as natively), then eval mode,
# then training again.
STEPS = [("train", 5), ("train", 3), ("train", 0), ("train", 4), ("eval", 3), ("eval", 4), ("train", 6)]


def module_pair(name, kwargs, dtype):
    torch.manual_seed(0)
    native = getattr(torch.nn, name)(**{"num_features": 4, **kwargs}, dtype=dtype)
    with torch.no_grad():  # parameters away from 1 and 0, so that forgetting them shows
        for p in native.parameters():
            p.add_(torch.randn_like(p))
    ours = getattr(torchbp.nn, name)(**{"num_features": 4, **kwargs}, dtype=dtype)
    ours.load_state_dict(native.state_dict())
    return ours, native


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("constructor", CONSTRUCTORS)
@pytest.mark.parametrize("inputs", MODULE_INPUTS)
def test_the_module_steps_as_native(inputs, constructor, dtype):
    """Output to the bit, gradients within tolerance and buffers to the bit, step after step."""
    name, sample_shape = MODULE_INPUTS[inputs]
    ours, native = module_pair(name, CONSTRUCTORS[constructor], dtype)
    generator = torch.Generator().manual_seed(1)
    for step, (mode, n) in enumerate(STEPS):
        ours.train(mode == "train"), native.train(mode == "train")
        x = torch.randn(n, *sample_shape, generator=generator, dtype=dtype) * 2 + 1
        g = torch.randn(x.shape, generator=generator, dtype=dtype)
        x_ours, x_native = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_native = ours(x_ours), native(x_native)
        assert torch.equal(y_ours, y_native), step
        y_ours.backward(g), y_native.backward(g)
        rows = [compare_tensors("input.grad", x_ours.grad, x_native.grad)]
        rows += [
            compare_tensors(f"{k}.grad", p.grad, q.grad)
            for (k, p), q in zip(ours.named_parameters(), native.parameters())
        ]
        for row in rows:
            assert row.ok, (step, row)
        ours.zero_grad(), native.zero_grad()
        for (key, mine), theirs in zip(ours.state_dict().items(), native.state_dict().values()):
            assert torch.equal(mine, theirs), (step, key)
    tracked = CONSTRUCTORS[constructor].get("track_running_stats", True)
    if tracked:
        assert int(ours.num_batches_tracked) == 5  # the training steps, the empty batch's included
    else:
        assert ours.num_batches_tracked is None and ours.running_mean is None


@pytest.mark.parametrize("momentum", [0.1, 0.3, None], ids=str)
@pytest.mark.parametrize("inputs", MODULE_INPUTS)
def test_running_statistics_follow_the_formula(inputs, momentum):
    """running ← (1 − m) running + m · the batch's statistic, its variance unbiased, m = 1/t for the t-th batch
    with momentum None; eval mode leaves them alone. Stated independently of native's code."""
    name, sample_shape = MODULE_INPUTS[inputs]
    module = getattr(torchbp.nn, name)(4, momentum=momentum, dtype=f64)
    mean, var = torch.zeros(4, dtype=f64), torch.ones(4, dtype=f64)
    generator = torch.Generator().manual_seed(1)
    t = 0
    for mode, n in STEPS:
        module.train(mode == "train")
        x = torch.randn(n, *sample_shape, generator=generator, dtype=f64) * 2 + 1
        module(x)
        if mode == "train":
            t += 1
            if n > 0:  # an empty batch counts, but has no statistics to add
                m = 1 / t if momentum is None else momentum
                values = x.transpose(0, 1).reshape(4, -1)  # (C, M)
                mean = (1 - m) * mean + m * values.mean(1)
                var = (1 - m) * var + m * values.var(1, correction=1)
        torch.testing.assert_close(module.running_mean, mean, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(module.running_var, var, rtol=1e-13, atol=1e-15)
        assert int(module.num_batches_tracked) == t


def test_the_functional_form_updates_the_running_statistics_it_is_given():
    x = torch.randn(6, 3, 2, dtype=f64)
    mean, var = torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64)
    TF.batch_norm(x, mean, var, training=True, momentum=0.25)
    values = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(mean, 0.25 * values.mean(1), rtol=1e-14, atol=0)
    torch.testing.assert_close(var, 0.75 + 0.25 * values.var(1), rtol=1e-14, atol=0)
    before = (mean.clone(), var.clone())
    TF.batch_norm(x, mean, var, training=False)  # eval mode reads them only
    assert torch.equal(mean, before[0]) and torch.equal(var, before[1])


# -- mixed precision ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_bfloat16_input_with_float32_parameters_and_statistics_works_as_natively(mode):
    seed()
    x, mean, var, weight, bias, training, momentum, eps = detached(arguments((6, 4, 3), mode, f32))
    x = (x * 2 + 1).to(bf16)
    sides = {}
    for side, fn in (("ours", TF.batch_norm), ("native", F.batch_norm)):
        args = cloned((x, mean, var, weight, bias))
        for a in (args[0], args[3], args[4]):
            if a is not None:
                a.requires_grad_()
        y = fn(*args, training, momentum, eps)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(bf16))
        sides[side] = (y, args)
    (y, args), (y_native, args_native) = sides["ours"], sides["native"]
    assert y.dtype == bf16 and torch.equal(y, y_native)
    # The values, to bfloat16's precision, of the same normalisation in float64.
    exact = F.batch_norm(
        *(a.double() if a is not None else None for a in cloned((x, mean, var, weight, bias))), training
    )
    torch.testing.assert_close(y.double(), exact, rtol=1e-2, atol=1e-2)
    for i, dtype in ((0, bf16), (3, f32), (4, f32)):  # ∂J/∂x in the input's dtype, ∂J/∂γ and ∂J/∂β in theirs
        if args[i] is None:
            continue
        assert args[i].grad.dtype == dtype and torch.isfinite(args[i].grad).all()
        row = compare_tensors(f"inputs[{i}].grad", args[i].grad, args_native[i].grad, rtol=2e-2)
        assert row.ok, row
    for i in (1, 2):  # the float32 running statistics, written by native's own kernel
        assert args[i] is None or (args[i].dtype == f32 and torch.equal(args[i], args_native[i]))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_batch_norm_under_autocast_checks_as_natively(mode):
    """A Conv2d's bfloat16 output under autocast, into a BatchNorm2d whose parameters are float32."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    model.train(mode == "train")
    x = torch.randn(3, 2, 5, 5)
    with torch.autocast("cpu", dtype=bf16):
        expected, got = model(x), torchbp.convert(model)(x)
    assert got.dtype == expected.dtype == bf16
    assert torch.equal(got, expected)
    with torch.autocast("cpu", dtype=bf16):
        torchbp.check_model(model, torch.nn.MSELoss(), x, torch.randn(3, 36), rtol=2e-2).assert_ok()


# -- planted bugs: the checks above fail on a wrong formula ---------------------------------------------------------


def _mean_m(t):
    return t.mean((0, *range(2, t.dim())), keepdim=True)


def _mean_m_unbiased(t):
    """The sum over the M positions of each channel over M − 1: (1, C, 1, …)."""
    return _mean_m(t) * (t.numel() // t.shape[1]) / (t.numel() // t.shape[1] - 1)


def _three_terms(g, x_hat, scale, mean=_mean_m):
    return scale * (g - mean(g) - x_hat * mean(g * x_hat))


# Each a wrong gradient from g, x̂ (from the forward's statistics), rstd and γ as (1, C, 1, …), in the mode it is
# planted in: {"x" | "weight" | "bias": ...}.
PLANTED = {
    "∂J/∂x without the through-μ term − mean_m(g)": (
        "training",
        lambda g, x_hat, rstd, gamma: {"x": gamma * rstd * (g - x_hat * _mean_m(g * x_hat))},
    ),
    "∂J/∂x without the through-σ² term − x̂ mean_m(g ⊙ x̂)": (
        "training",
        lambda g, x_hat, rstd, gamma: {"x": gamma * rstd * (g - _mean_m(g))},
    ),
    "∂J/∂x with M − 1 for M in the means": (
        "training",
        lambda g, x_hat, rstd, gamma: {"x": _three_terms(g, x_hat, gamma * rstd, _mean_m_unbiased)},
    ),
    "∂J/∂x with γ forgotten": ("training", lambda g, x_hat, rstd, gamma: {"x": _three_terms(g, x_hat, rstd)}),
    "∂J/∂x with rstd forgotten": ("training", lambda g, x_hat, rstd, gamma: {"x": _three_terms(g, x_hat, gamma)}),
    "∂J/∂γ as Σ g, x̂ forgotten": ("training", lambda g, x_hat, rstd, gamma: {"weight": g.sum((0, 2))}),
    "∂J/∂β as a mean over the batch": ("training", lambda g, x_hat, rstd, gamma: {"bias": _mean_m(g).flatten()}),
    "eval: ∂J/∂x through the batch's statistics, as in training mode": (
        "eval, from the batch's statistics",
        lambda g, x_hat, rstd, gamma: {"x": _three_terms(g, x_hat, gamma * rstd)},
    ),
    "eval: ∂J/∂x with γ forgotten": ("eval", lambda g, x_hat, rstd, gamma: {"x": g * rstd}),
}
PLANTED_IN = {  # the mode of the check each mistake is planted in
    "training": "training, batch statistics, running ones updated",
    "eval": "eval, running statistics",
    "eval, from the batch's statistics": "eval, running statistics",
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_a_planted_wrong_formula_is_caught(monkeypatch, mistake):
    mode, formula = PLANTED[mistake]
    right = batch_norm_module.batch_norm_backward

    def wrong(g, x, mean, rstd, weight, training, eps, *needs):
        grads = dict(zip(("x", "weight", "bias"), right(g, x, mean, rstd, weight, training, eps, *needs)))
        x_hat = (x - per_channel(mean, x)) * per_channel(rstd, x)
        if mode.endswith("batch's statistics"):  # μ and rstd of the batch, as a training-mode backward reads them
            x_hat, rstd = normalize(x, eps)
        grads.update(formula(g, x_hat, per_channel(rstd, x), per_channel(weight, x)))
        return grads["x"], grads["weight"], grads["bias"]

    monkeypatch.setattr(batch_norm_module, "batch_norm_backward", wrong)
    seed()
    report = check_function(TF.batch_norm, F.batch_norm, *arguments((5, 4, 3), PLANTED_IN[mode]))
    assert not report.ok, report


def _unbiased_normalized(x, mean, rstd, training, eps):
    centered = x - _mean_m(x)
    return centered * torch.rsqrt(_mean_m_unbiased(centered.square()) + eps), rstd


PLANTED_NORMALIZED = {  # a wrong x̂ for the backward, in the mode it is planted in
    "x̂ from the batch's statistics in eval mode": ("eval", lambda x, mean, rstd, training, eps: normalize(x, eps)),
    "x̂ from the unbiased variance (M − 1) in training mode": ("training", _unbiased_normalized),
    "x̂ without rstd": ("training", lambda x, mean, rstd, training, eps: (x - per_channel(mean, x), rstd)),
}


@pytest.mark.parametrize("mistake", PLANTED_NORMALIZED)
def test_a_planted_wrong_normalisation_is_caught(monkeypatch, mistake):
    mode, wrong = PLANTED_NORMALIZED[mistake]
    monkeypatch.setattr(batch_norm_module, "normalized", wrong)
    seed()
    report = check_function(TF.batch_norm, F.batch_norm, *arguments((5, 4, 3), PLANTED_IN[mode]))
    assert not report.ok, report


# -- bad input -------------------------------------------------------------------------------------------------------


def x6():
    return torch.randn(2, 6, 3)


BAD_INPUTS = {
    "weight of the wrong length": (
        lambda f: f.batch_norm(x6(), None, None, torch.randn(5), training=True),
        torchbp.ShapeError,
        r"weight of shape \(6,\).*\(2, 6, 3\), got \(5,\)",
    ),
    "bias of the wrong shape": (
        lambda f: f.batch_norm(x6(), None, None, None, torch.randn(6, 1), training=True),
        torchbp.ShapeError,
        r"bias of shape \(6,\).*got \(6, 1\)",
    ),
    "running_mean of the wrong length": (
        lambda f: f.batch_norm(x6(), torch.zeros(5), torch.ones(5)),
        torchbp.ShapeError,
        r"running_mean of shape \(6,\).*got \(5,\)",
    ),
    "running_mean without running_var": (
        lambda f: f.batch_norm(x6(), torch.zeros(6), None, training=True),
        torchbp.ArgumentError,
        r"running_mean and running_var both given or both None",
    ),
    "running_var without running_mean": (
        lambda f: f.batch_norm(x6(), None, torch.ones(6), training=True),
        torchbp.ArgumentError,
        r"running_mean and running_var both given or both None",
    ),
    "eval mode without running statistics": (
        lambda f: f.batch_norm(x6(), None, None, training=False),
        torchbp.ArgumentError,
        r"running_mean and running_var in eval mode \(training=False\), got None",
    ),
    "1-d input": (
        lambda f: f.batch_norm(torch.randn(6), None, None, training=True),
        torchbp.ShapeError,
        r"\(N, C, \*\), got \(6,\)",
    ),
    "integer input": (
        lambda f: f.batch_norm(torch.ones(2, 6, dtype=torch.int64), None, None, training=True),
        torchbp.DTypeError,
        r"input.*torch\.int64",
    ),
    "weight of another dtype": (
        lambda f: f.batch_norm(torch.randn(2, 6), None, None, torch.randn(6, dtype=f64), training=True),
        torchbp.DTypeError,
        r"weight.*torch\.float32.*torch\.float64",
    ),
    "float64 running statistics beside a bfloat16 input": (
        lambda f: f.batch_norm(torch.randn(2, 6).to(bf16), torch.zeros(6, dtype=f64), torch.ones(6, dtype=f64)),
        torchbp.DTypeError,
        r"running_mean.*torch\.bfloat16.*torch\.float64",
    ),
    "weight on another device": (
        lambda f: f.batch_norm(torch.randn(2, 6), None, None, torch.randn(6, device="meta"), training=True),
        torchbp.DeviceError,
        r"cpu.*meta",
    ),
    "one value per channel in training mode": (
        lambda f: f.batch_norm(torch.randn(1, 6), None, None, training=True),
        ValueError,
        r"^Expected more than 1 value per channel when training, got input size torch\.Size\(\[1, 6\]\)$",
    ),
    "one value per channel in training mode, 3-d": (
        lambda f: f.batch_norm(torch.randn(1, 6, 1), torch.zeros(6), torch.ones(6), training=True),
        ValueError,
        r"^Expected more than 1 value per channel when training, got input size torch\.Size\(\[1, 6, 1\]\)$",
    ),
    "eps zero in training mode": (
        lambda f: f.batch_norm(x6(), None, None, training=True, eps=0.0),
        ValueError,
        r"^batch_norm eps must be positive during training, but got 0\.0$",
    ),
    "eps negative in eval mode": (
        lambda f: f.batch_norm(x6(), torch.zeros(6), torch.ones(6), eps=-1e-5),
        ValueError,
        r"^batch_norm eps must be non-negative, but got -1e-05$",
    ),
    "momentum None": (
        lambda f: f.batch_norm(x6(), torch.zeros(6), torch.ones(6), training=True, momentum=None),
        TypeError,
        r"momentum.*None",
    ),
    "eps a tensor": (
        lambda f: f.batch_norm(x6(), None, None, training=True, eps=torch.tensor(1e-5)),
        TypeError,
        r"eps.*tensor",
    ),
    "input not a tensor": (lambda f: f.batch_norm([[1.0, 2.0]], None, None, training=True), TypeError, r"Tensor.*list"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call(TF)


# What native refuses too, by an error of a type ours is an instance of. Native refuses the 1-d input by IndexError
# and the integer one by NotImplementedError: ours are ShapeError and DTypeError, of neither type. Native accepts a
# bias of shape (6, 1) (six values) and an eps that is a tensor; ours refuse them, as the other layers do.
NATIVE_REFUSES = [
    "weight of the wrong length",
    "running_mean of the wrong length",
    "running_mean without running_var",
    "running_var without running_mean",
    "eval mode without running statistics",
    "weight of another dtype",
    "float64 running statistics beside a bfloat16 input",
    "weight on another device",
    "one value per channel in training mode",
    "one value per channel in training mode, 3-d",
    "eps zero in training mode",
    "eps negative in eval mode",
    "momentum None",
]


@pytest.mark.parametrize("case", NATIVE_REFUSES)
def test_what_native_refuses_raises_an_error_of_natives_type(case):
    call = BAD_INPUTS[case][0]
    with pytest.raises(Exception) as theirs:
        call(F)
    with pytest.raises(type(theirs.value)):
        call(TF)


@pytest.mark.parametrize(
    "name, shape",
    [("BatchNorm2d", (2, 4, 3)), ("BatchNorm2d", (2, 4)), ("BatchNorm1d", (2, 4, 3, 3)), ("BatchNorm1d", (4,))],
    ids=str,
)
def test_the_modules_refuse_an_input_of_the_wrong_rank_as_native(name, shape):
    ours, native = module_pair(name, {}, f32)
    with pytest.raises(ValueError) as theirs:
        native(torch.randn(shape))
    with pytest.raises(ValueError, match=f"^{theirs.value}$".replace("(", r"\(").replace(")", r"\)")):
        ours(torch.randn(shape))


def test_the_module_refuses_one_value_per_channel_in_training_mode_only():
    ours, native = module_pair("BatchNorm1d", {}, f32)
    x = torch.randn(1, 4)
    for module in (ours, native):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            module(x)
    assert int(ours.num_batches_tracked) == int(native.num_batches_tracked) == 1  # counted before refused, as natively
    ours.eval(), native.eval()
    assert torch.equal(ours(x), native(x))


# -- the modules, convert, check_model, state_dict ---------------------------------------------------------------


@pytest.mark.parametrize("constructor", CONSTRUCTORS)
@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d"])
def test_the_module_is_a_drop_in_for_every_constructor(name, constructor):
    ours, native = module_pair(name, CONSTRUCTORS[constructor], f32)
    assert isinstance(ours, getattr(torch.nn, name)) and ours.extra_repr() == native.extra_repr()
    assert repr(ours).startswith(f"torchbp.{name}(")
    assert type(torchbp.convert(native)) is getattr(torchbp.nn, name)
    # state_dicts are interchangeable: native's into ours (above, in module_pair) and ours back into native's.
    assert list(ours.state_dict()) == list(native.state_dict())
    fresh = getattr(torch.nn, name)(4, **CONSTRUCTORS[constructor])
    fresh.load_state_dict(ours.state_dict())
    for mine, theirs in zip(fresh.state_dict().values(), native.state_dict().values()):
        assert torch.equal(mine, theirs)
    x = torch.randn(3, 4, *((2, 3) if name == "BatchNorm2d" else (5,)))
    assert torch.equal(ours(x), native(x))


def test_a_trained_native_state_dict_loads_into_the_torchbp_module_and_back():
    torch.manual_seed(0)
    native = torch.nn.BatchNorm2d(4)
    for _ in range(3):
        native(torch.randn(5, 4, 2, 2) * 3 + 1)
    ours = torchbp.nn.BatchNorm2d(4)
    ours.load_state_dict(native.state_dict())
    assert int(ours.num_batches_tracked) == 3
    x = torch.randn(5, 4, 2, 2)
    ours.eval(), native.eval()
    assert torch.equal(ours(x), native(x))
    ours.train(), native.train()
    ours(x), native(x)
    back = torch.nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    for mine, theirs in zip(back.state_dict().values(), native.state_dict().values()):
        assert torch.equal(mine, theirs)


def model_with_batch_norm(norm_kwargs=None, bias=False):
    """Conv2d, BatchNorm2d, Tanh, Flatten, Linear, BatchNorm1d. The layers before the norms have no bias by default
    (as is usual): in training mode a bias right before a batch norm gets the gradient zero (the batch's mean takes
    it away), which both sides give only as rounding noise (the test below)."""
    norm_kwargs = norm_kwargs or {}
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1, bias=bias),
        torch.nn.BatchNorm2d(4, **norm_kwargs),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 6, bias=bias),
        torch.nn.BatchNorm1d(6, **norm_kwargs),
    ).double()


def images(n=5):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 4, 4, generator=generator, dtype=f64)


def warmed_up(model):
    """After a few training steps, so that the running statistics are not the initial zeros and ones."""
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        model(torch.randn(5, 2, 4, 4, generator=generator, dtype=f64) * 2 + 1)
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"track_running_stats": False}, {"momentum": None}], ids=str)
def test_convert_replaces_them_and_check_model_says_match(kwargs, mode):
    model = warmed_up(model_with_batch_norm(kwargs))
    model.train(mode == "train")
    converted = torchbp.convert(model)
    assert type(converted[1]) is torchbp.nn.BatchNorm2d and type(converted[5]) is torchbp.nn.BatchNorm1d
    report = torchbp.check_model(model, torch.nn.MSELoss(), images(), torch.randn(5, 6, dtype=f64))
    report.assert_ok()  # the buffers are among its rows: updated alike in training mode
    assert "MATCH" in str(report)
    assert report.layers.startswith("hand-derived: 0 Conv2d, 1 BatchNorm2d, 2 Tanh, 4 Linear, 5 BatchNorm1d"), report


def test_a_bias_before_a_training_mode_batch_norm_gets_zero_but_for_rounding():
    model = model_with_batch_norm(bias=True)
    report = torchbp.check_model(model, torch.nn.MSELoss(), images(), torch.randn(5, 6, dtype=f64), atol=1e-14)
    report.assert_ok()
    for row in report.rows:
        if row.name in ("0.bias.grad", "4.bias.grad"):
            assert row.reference_max < 1e-14, row


# -- per-sample gradients --------------------------------------------------------------------------------------------


def model_2d():
    return warmed_up(model_with_batch_norm({}, bias=True)).eval()


def model_1d():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh()).double()
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        model(torch.randn(5, 3, generator=generator, dtype=f64) * 2 + 1)
    return model.eval()


def model_1d_3d():
    """BatchNorm1d on (N, C, L): each sample's gradient sums over its positions."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 12), torch.nn.Unflatten(1, (4, 3)), torch.nn.BatchNorm1d(4), torch.nn.Flatten()
    ).double()
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        model(torch.randn(5, 3, generator=generator, dtype=f64) * 2 + 1)
    return model.eval()


def vectors(n=5):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=f64)


PER_SAMPLE_MODELS = {
    "BatchNorm2d": (model_2d, images),
    "BatchNorm1d, (N, C)": (model_1d, vectors),
    "BatchNorm1d, (N, C, L)": (model_1d_3d, vectors),
}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", PER_SAMPLE_MODELS)
def test_per_sample_gradients_in_eval_mode_are_torch_funcs(case, reduction):
    make_model, make_inputs = PER_SAMPLE_MODELS[case]
    model, x = make_model(), make_inputs()
    target = torch.randn_like(model(x))
    loss_fn = torch.nn.MSELoss(reduction=reduction)
    expected = per_sample_by_torch_func(model, loss_fn, x, target)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    grads = torchbp.per_sample_grads(model, loss_fn, x, target)
    assert list(grads) == list(expected)
    for key in expected:
        row = compare_tensors(key, grads[key], expected[key])
        assert row.ok, row
    norms = torchbp.per_sample_grad_norms(model, loss_fn, x, target)
    row = compare_tensors("norms", norms, torch.sqrt(sum(g.flatten(1).square().sum(1) for g in expected.values())))
    assert row.ok, row
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # eval mode: buffers untouched


PLANTED_PER_SAMPLE = {
    "weight without x̂": ("per_sample_weight_grads", lambda delta, a_prev, module: per_sample_sums(delta)),
    "weight with x̂ from the batch's statistics": (
        "per_sample_weight_grads",
        lambda delta, a_prev, module: per_sample_sums(delta * F.batch_norm(a_prev, None, None, training=True)),
    ),
    "weight with x − μ, rstd forgotten": (
        "per_sample_weight_grads",
        lambda delta, a_prev, module: per_sample_sums(delta * (a_prev - per_channel(module.running_mean, a_prev))),
    ),
    "bias twice": ("per_sample_bias_grads", lambda delta: per_sample_sums(delta) * 2),
    "bias summed over the samples too": (
        "per_sample_bias_grads",
        lambda delta: per_sample_sums(delta).sum(0).expand(delta.shape[:2]),
    ),
}


def per_sample_sums(t):
    return t.reshape(t.shape[0], t.shape[1], -1).sum(2)


@pytest.mark.parametrize("mistake", PLANTED_PER_SAMPLE)
def test_a_planted_wrong_per_sample_rule_is_caught(monkeypatch, mistake):
    name, wrong = PLANTED_PER_SAMPLE[mistake]
    monkeypatch.setattr(batch_norm_module, name, wrong)
    with pytest.raises(AssertionError):
        test_per_sample_gradients_in_eval_mode_are_torch_funcs("BatchNorm2d", "sum")


@pytest.mark.parametrize(
    "make_model, make_inputs, named",
    [
        (lambda: model_2d().train(), images, r"BatchNorm2d\(4\) normalises in training mode"),
        (lambda: model_1d().train(), vectors, r"BatchNorm1d\(4\) normalises in training mode"),
        (
            lambda: (
                torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, track_running_stats=False))
                .double()
                .eval()
            ),
            vectors,
            r"BatchNorm1d\(4\) normalises without running statistics",
        ),
    ],
    ids=["BatchNorm2d, training", "BatchNorm1d, training", "BatchNorm1d, eval without running statistics"],
)
@pytest.mark.parametrize("function", ["per_sample_grads", "per_sample_grad_norms"])
def test_per_sample_gradients_with_the_batchs_statistics_are_refused(function, make_model, make_inputs, named):
    model, x = torchbp.convert(make_model()), make_inputs()  # a torchbp model: the pass runs it, not a copy
    with torch.no_grad():
        target = torch.randn_like(model(x))
    buffers = [b.clone() for b in model.buffers()]
    with pytest.raises(NotImplementedError, match=named + r".*eval\(\).*use GroupNorm or LayerNorm"):
        getattr(torchbp, function)(model, torch.nn.MSELoss(), x, target)
    assert all(torch.equal(b, before) for b, before in zip(model.buffers(), buffers))  # refused before any forward
