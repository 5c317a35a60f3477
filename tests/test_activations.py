"""The activations sigmoid, tanh, ReLU and GELU: each backward from one saved tensor, the same bits as native
(GELU's to rounding).

Cases are data: every test runs over ACTIVATIONS, so an activation added there is held to all of them.
"""

import functools
import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchbp
import torchbp.functional as TF
import torchbp.layers.gelu
from torchbp.check import check_function, check_model
from torchbp.functions import GELUFunction, ReLUFunction, SigmoidFunction, TanhFunction
from torchbp.layers.gelu import GELUTanhFunction

from conftest import DEVICES


class Activation(NamedTuple):
    name: str
    ours: Callable  # the functional form
    native: Callable
    function: type  # its autograd Function
    module: type  # its torchbp.nn class
    native_module: Callable  # makes the native module
    wrong: Callable  # a planted wrong derivative: a (or z) -> f'(z)
    bits: bool = True  # the same bits as native's backward on the CPU (else to rounding)


def gelu_tanh(z):
    return torch.nn.functional.gelu(z, approximate="tanh")


ACTIVATIONS = [
    Activation(
        "sigmoid", TF.sigmoid, torch.sigmoid, SigmoidFunction, torchbp.nn.Sigmoid, torch.nn.Sigmoid, lambda a: a
    ),  # (1 − a) dropped
    Activation(
        "tanh", TF.tanh, torch.tanh, TanhFunction, torchbp.nn.Tanh, torch.nn.Tanh, lambda a: 1 - a
    ),  # 1 − a for 1 − a²
    Activation(
        "relu", TF.relu, torch.relu, ReLUFunction, torchbp.nn.ReLU, torch.nn.ReLU, lambda a: torch.ones_like(a)
    ),  # no mask
    Activation(
        "gelu",
        TF.gelu,
        torch.nn.functional.gelu,
        GELUFunction,
        torchbp.nn.GELU,
        torch.nn.GELU,
        lambda z: 0.5 * (1 + torch.erf(z * 0.5**0.5)),
        bits=False,
    ),  # Φ(z) without z φ(z)
    Activation(
        "gelu (tanh)",
        functools.partial(TF.gelu, approximate="tanh"),
        gelu_tanh,
        GELUTanhFunction,
        torchbp.nn.GELU,
        functools.partial(torch.nn.GELU, approximate="tanh"),
        lambda z: 0.5 * (1 + torch.tanh(0.7978845608 * (z + 0.044715 * z**3))),
        bits=False,
    ),  # the tanh term's derivative dropped
]
IDS = [activation.name for activation in ACTIVATIONS]
SHAPES = [(), (5,), (3, 4), (0, 3), (2, 3, 4)]


def values(*shape, dtype=torch.float64, device="cpu"):
    """Normal values with exact zeros among them (where ReLU's derivative is decided by convention)."""
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.view(-1)[::7] = 0
    return x.to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_matches_native_to_the_bit(activation, shape, dtype, device):
    report = check_function(activation.ours, activation.native, values(*shape, dtype=dtype, device=device))
    report.assert_ok()
    assert report.max_abs_error == 0 or not activation.bits, str(report)


@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=4))
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_matches_native_for_any_shape(activation, shape):
    report = check_function(activation.ours, activation.native, values(*shape, dtype=torch.float32))
    assert report.ok and (report.max_abs_error == 0 or not activation.bits), str(report)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_nan_and_infinite_upstream_gradients_flow_as_natively(activation):
    x = values(8)
    g = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 2, dtype=torch.float64)
    check_function(activation.ours, activation.native, x, grad_output=g).assert_ok()


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_torchbp_verify_passes(activation):
    report = torchbp.verify(
        activation.ours,
        activation.native,
        values(6, 4) + 0.01,  # off ReLU's kink: gradcheck
        compile_backend="aot_eager",
    )
    report.assert_ok()


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_a_planted_wrong_formula_is_caught(activation, monkeypatch):
    monkeypatch.setattr(activation.function, "derivative", staticmethod(activation.wrong))
    report = check_function(activation.ours, activation.native, values(4, 3))
    assert not report.ok and "inputs[0].grad" in [row.name for row in report.mismatches]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_a_planted_wrong_formula_is_caught_in_the_fused_chain_too(activation, monkeypatch):
    """One formula: the fused chain's step reads the same derivative as the per-layer backward."""
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), activation.native_module(), torch.nn.Linear(4, 2)).double()
    fused = torchbp.fuse(native)
    check_model(fused, torch.nn.MSELoss(), values(5, 3), values(5, 2)).assert_ok()
    monkeypatch.setattr(activation.function, "derivative", staticmethod(activation.wrong))
    x = values(5, 3).requires_grad_()
    assert type(fused(x).grad_fn).__name__.startswith("SequentialFunction")
    report = check_model(fused, torch.nn.MSELoss(), values(5, 3), values(5, 2))
    assert not report.ok and "0.weight.grad" in [row.name for row in report.mismatches]


def test_a_derivative_that_is_the_output_itself_leaves_the_output_alone(monkeypatch):
    """An activation whose f' is a (eᶻ's) may return a itself: the products must not be written into it."""
    monkeypatch.setattr(SigmoidFunction, "derivative", staticmethod(lambda a: a))
    z = values(4, 3).requires_grad_()
    a = TF.sigmoid(z)
    kept = a.detach().clone()
    a.backward(torch.full_like(a, 2.0))
    assert torch.equal(a.detach(), kept)
    assert torch.equal(z.grad, 2.0 * kept)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_saves_one_tensor_and_nothing_else(activation):
    """Its output (sigmoid, tanh, ReLU) or its input (GELU, whose output cannot give Φ(z) back at z = 0)."""
    saved = []
    z = values(4, 3).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        a = activation.ours(z)
    assert len(saved) == 1 and saved[0] is (z if activation.function.saves == "input" else a)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_an_integer_input_is_refused(activation):
    with pytest.raises(
        torchbp.DTypeError, match=f"{activation.name.split()[0]}: expected input to be a floating-point tensor"
    ):
        activation.function.apply(torch.arange(3))


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_the_module_is_a_drop_in_for_the_native_one(activation):
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), activation.native_module(), torch.nn.Linear(4, 2)).double()
    converted = torchbp.convert(native)
    native_class = type(native[1])
    assert type(converted[1]) is activation.module and isinstance(converted[1], native_class)
    assert type(torchbp.to_native(converted)[1]) is native_class
    assert converted[1].extra_repr() == native[1].extra_repr()  # the same arguments (GELU's approximate)
    report = check_model(native, torch.nn.MSELoss(), values(5, 3), values(5, 2))
    report.assert_ok()
    assert f"1 {activation.module.__name__}" in report.layers


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_fused_chains_take_it_as_a_step(activation):
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), activation.native_module(), torch.nn.Linear(4, 2)).double()
    fused = torchbp.fuse(native)
    x = values(5, 3).requires_grad_()
    assert type(fused(x).grad_fn).__name__.startswith("SequentialFunction")
    check_model(fused, torch.nn.MSELoss(), values(5, 3), values(5, 2)).assert_ok()


def test_relu_inplace_writes_into_its_input_as_natively():
    """A module that relies on the write (h = l1(x); relu(h); return l2(h)) computes what native computes."""

    class ReliesOnTheWrite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.relu, self.l2 = torch.nn.Linear(3, 4), torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.l1(x)
            self.relu(h)
            return self.l2(h)

    torch.manual_seed(0)
    check_model(ReliesOnTheWrite().double(), torch.nn.MSELoss(), values(5, 3), values(5, 2)).assert_ok()
    x = values(4, 3)
    assert torchbp.nn.ReLU(inplace=True)(x) is x and torch.equal(x, torch.relu(values(4, 3)))


SPECIAL_Z = [float("nan"), -float("nan"), 0.0, -0.0, -1.0, 2.0, -3.0, 1e-30, -1e-30, float("inf"), -float("inf")]
SPECIAL_G = [1.0, 2.0, float("inf"), -float("nan"), -5.0, float("nan"), -float("inf"), -2.0, 3.0, 4.0, -1.0]


def same_bits(ours: torch.Tensor, native: torch.Tensor) -> bool:
    """Equal to the bit, zeros' signs included; NaNs only as NaNs (their payload is the kernel's choice)."""
    integer = {8: torch.int64, 4: torch.int32, 2: torch.int16}[ours.element_size()]
    nan = ours.isnan()
    return torch.equal(nan, native.isnan()) and torch.equal(ours[~nan].view(integer), native[~nan].view(integer))


@pytest.mark.parametrize("create_graph", [False, True], ids=["in place", "recorded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_relu_selects_as_natively_where_values_are_special(dtype, create_graph):
    """g passes where z > 0 or z is NaN and is exactly +0 elsewhere, a NaN or ∞ in g included, on both
    routes of the selection (bit masks in place on the CPU, torch.where where the backward is recorded),
    and in vectorised lengths (the values thrice, then a long random tail with exact zeros)."""
    tail = values(300, dtype=torch.float64)
    z = torch.cat([torch.tensor(SPECIAL_Z * 3, dtype=torch.float64), tail]).to(dtype)
    g = torch.cat([torch.tensor(SPECIAL_G * 3, dtype=torch.float64), tail.flip(0) * 3]).to(dtype)
    grads = []
    for relu in (TF.relu, torch.relu):
        leaf = z.clone().requires_grad_()
        (grad,) = torch.autograd.grad(relu(leaf), leaf, g, create_graph=create_graph)
        grads.append(grad.detach())
    assert same_bits(*grads)


def test_gelus_literal_constants_are_the_values_they_stand_for():
    """gelu.py writes its constants as literals (a global float breaks compiled backwards): each is its value."""
    source = inspect.getsource(torchbp.layers.gelu)
    values = {
        "0.7071067811865476": 1 / math.sqrt(2),
        "0.3989422804014327": 1 / math.sqrt(2 * math.pi),
        "0.7978845608028654": math.sqrt(2 / math.pi),
        "0.134145": 3 * 0.044715,
    }
    for literal, value in values.items():
        assert literal in source and math.isclose(float(literal), value, rel_tol=1e-15)
