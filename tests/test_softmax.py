"""Softmax and LogSoftmax over any dimension: each backward from its saved output, against native autograd.

Cases are data: every test runs over LAYERS (the two of them), and over SHAPES_AND_DIMS where it takes one.
"""

import warnings
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.gradcheck import GradcheckError

import torchbp
import torchbp.functional as TF
import torchbp.layers.log_softmax
import torchbp.layers.softmax
from torchbp.check import check_function, check_model
from torchbp.functions import LogSoftmaxFunction, SoftmaxFunction


class Normalizer(NamedTuple):
    name: str
    ours: Callable  # the functional form
    native: Callable
    function: type
    module: type  # torchbp.nn's
    native_module: type
    formula: str  # the module attribute holding its backward formula
    wrong: Callable  # a planted wrong formula with the formula's signature


LAYERS = [
    Normalizer(
        "softmax",
        TF.softmax,
        F.softmax,
        SoftmaxFunction,
        torchbp.nn.Softmax,
        torch.nn.Softmax,
        "softmax_backward",
        lambda g, y, dim: g * y,  # Σ g ⊙ y left out
    ),
    Normalizer(
        "log_softmax",
        TF.log_softmax,
        F.log_softmax,
        LogSoftmaxFunction,
        torchbp.nn.LogSoftmax,
        torch.nn.LogSoftmax,
        "log_softmax_backward",
        lambda g, log_y, dim, in_place=False: g - log_y.exp() * g,  # g for Σ g
    ),
]
IDS = [layer.name for layer in LAYERS]
SHAPES_AND_DIMS = [((5, 7), 1), ((5, 7), 0), ((5, 7), -1), ((2, 3, 4), 1), ((2, 3, 4), -2), ((), 0), ((7,), 0)]
EMPTY = [((0, 4), 1), ((0, 4), 0), ((4, 0), 1), ((4, 0), 0), ((2, 0, 3), -1)]


def values(*shape, dtype=torch.float64, seed=0):
    return (3 * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, dim", SHAPES_AND_DIMS + EMPTY, ids=str)
@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_matches_native(layer, shape, dim, dtype):
    check_function(
        lambda z: layer.ours(z, dim), lambda z: layer.native(z, dim), values(*shape, dtype=dtype)
    ).assert_ok()


@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), data=st.data())
@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_matches_native_over_any_dimension_of_any_shape(layer, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    report = check_function(lambda z: layer.ours(z, dim), lambda z: layer.native(z, dim), values(*shape))
    assert report.ok, str(report)


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_nan_and_infinite_upstream_gradients_flow_as_natively(layer):
    g = torch.tensor([[float("nan"), 1.0, 2.0], [float("inf"), -1.0, 0.5], [1.0, 2.0, 3.0]], dtype=torch.float64)
    check_function(lambda z: layer.ours(z, 1), lambda z: layer.native(z, 1), values(3, 3), grad_output=g).assert_ok()


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_torchbp_verify_passes(layer):
    # dim -1: verify's vmap takes one sample, which has one dimension fewer
    torchbp.verify(
        lambda z: layer.ours(z, -1), lambda z: layer.native(z, -1), values(6, 4), compile_backend="aot_eager"
    ).assert_ok()


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_a_planted_wrong_formula_is_caught(layer, monkeypatch):
    module = torchbp.layers.softmax if layer.name == "softmax" else torchbp.layers.log_softmax
    monkeypatch.setattr(module, layer.formula, layer.wrong)
    report = check_function(lambda z: layer.ours(z, 1), lambda z: layer.native(z, 1), values(4, 3))
    assert not report.ok and "inputs[0].grad" in [row.name for row in report.mismatches]
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda z: layer.ours(z, 1), (values(4, 3).requires_grad_(),))


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_saves_its_output_and_nothing_else(layer):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer.ours(values(4, 3).requires_grad_(), 1)
    assert len(saved) == 1 and saved[0] is y


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_an_integer_input_is_refused(layer):
    with pytest.raises(torchbp.DTypeError, match=f"{layer.name}: expected input to be a floating-point tensor"):
        layer.ours(torch.arange(6).view(2, 3), 1)


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_a_dimension_out_of_range_is_refused_as_natively(layer):
    with pytest.raises(IndexError, match="Dimension out of range"):
        layer.ours(values(2, 3), 2)


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_dtype_casts_the_input_first_and_the_gradient_comes_back_in_its_dtype(layer):
    z = values(4, 3, dtype=torch.float32).requires_grad_()
    y = layer.ours(z, 1, dtype=torch.float64)
    assert y.dtype == torch.float64
    y.backward(values(4, 3, seed=1))
    native_z = z.detach().clone().requires_grad_()
    layer.native(native_z, 1, dtype=torch.float64).backward(values(4, 3, seed=1))
    assert z.grad.dtype == torch.float32
    torch.testing.assert_close(z.grad, native_z.grad)


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_without_a_dim_it_picks_natives_dimension_and_warns_as_natively(layer):
    for shape in [(7,), (4, 3), (2, 3, 4), (2, 3, 4, 5)]:
        z = values(*shape)
        with warnings.catch_warnings(record=True) as ours_warned:
            warnings.simplefilter("always")
            ours = layer.module()(z)
        with warnings.catch_warnings(record=True) as native_warned:
            warnings.simplefilter("always")
            native = layer.native_module()(z)
        assert torch.equal(ours, native)
        assert [str(w.message) for w in ours_warned] == [str(w.message) for w in native_warned] != []


@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_the_module_is_a_drop_in_for_the_native_one(layer):
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), layer.native_module(dim=1), torch.nn.Linear(4, 2)).double()
    converted = torchbp.convert(native)
    assert type(converted[1]) is layer.module and converted[1].dim == 1
    assert type(torchbp.to_native(converted)[1]) is layer.native_module
    report = check_model(native, torch.nn.MSELoss(), values(5, 3), values(5, 2))
    report.assert_ok()
    assert f"1 {layer.module.__name__}" in report.layers


@pytest.mark.parametrize("dim", [1, None], ids=["dim 1", "no dim"])
@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_fused_chains_take_it_as_a_step_when_it_has_a_dim(layer, dim):
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), layer.native_module(dim=dim), torch.nn.Linear(4, 2)).double()
    fused = torchbp.fuse(native)
    x = values(5, 3).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy dimension's warning
        grad_fn = type(fused(x).grad_fn).__name__
        assert grad_fn.startswith("SequentialFunction") == (dim is not None)  # without a dim: per layer
        check_model(fused, torch.nn.MSELoss(), values(5, 3), values(5, 2)).assert_ok()
