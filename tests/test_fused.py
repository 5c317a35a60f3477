"""torchbp.fuse: a chain of layers as one Function, equal to the per-layer path and to autograd."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchbp
from torchbp.check import check_model
from torchbp.functions import SequentialFunction
from torchbp.speed import fused
from torchbp.table import Step

from conftest import DEVICES, chain, chain_data


def test_fuse_makes_a_torchbp_sequential_and_to_native_reverses_it():
    model = chain()
    fused = torchbp.fuse(model)
    assert type(fused) is torchbp.nn.Sequential and isinstance(fused, torch.nn.Sequential)
    assert type(model) is torch.nn.Sequential  # the original is left alone
    assert fused.state_dict().keys() == model.state_dict().keys()
    assert type(torchbp.to_native(fused)) is torch.nn.Sequential
    assert repr(fused).startswith("torchbp.Sequential(")


CASES = [
    dict(widths=widths, bias=bias, dtype=dtype, middle=middle, n=n, last_sigmoid=last)
    for widths in ((2, 3, 1), (4, 5, 5, 3))
    for bias in (True, False)
    for dtype in (torch.float32, torch.float64)
    for middle in ((), (3,))
    for n in (5, 0)
    for last in (True, False)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_model_matches_native(case):
    model = torchbp.fuse(chain(case["widths"], case["bias"], case["dtype"], case["last_sigmoid"]))
    x, y = chain_data(case["n"], case["widths"], case["dtype"], case["middle"])
    report = check_model(model, torchbp.nn.MSELoss(reduction="sum"), x, y)
    assert report.ok, str(report)


@given(widths=st.lists(st.integers(1, 5), min_size=2, max_size=5), n=st.integers(0, 4))
def test_fused_model_matches_native_for_any_shape(widths, n):
    model = torchbp.fuse(chain(tuple(widths)))
    report = check_model(model, torchbp.nn.MSELoss(reduction="sum"), *chain_data(n, widths))
    assert report.ok, str(report)


def test_fused_and_per_layer_paths_give_identical_gradients():
    x, y = chain_data(5, (4, 5, 3))
    grads = []
    for make in (torchbp.convert, torchbp.fuse):
        model = make(chain((4, 5, 3)))
        torchbp.nn.MSELoss()(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def sequential_function(x, w1, b1, w2):
    return SequentialFunction.apply(x, ("linear", "sigmoid", "linear", "sigmoid"), w1, b1, w2, None)


def every_output_summed(x, w1, b1, w2):
    # A gradient arriving at an intermediate h_l must join δ there.
    return sum(h.sum() * (i + 1) for i, h in enumerate(sequential_function(x, w1, b1, w2)))


@pytest.mark.parametrize(
    "fn", [lambda *a: sequential_function(*a)[-1], every_output_summed], ids=["output", "every h_l"]
)
def test_gradcheck_and_gradgradcheck(fn):
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((5, 2), (3, 2), (3,), (1, 3))
    ]
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_a_wrong_step_in_the_chain_is_caught(monkeypatch):
    monkeypatch.setattr(torchbp.functions.SigmoidFunction, "derivative", staticmethod(lambda a: a))  # (1 − a) dropped
    report = check_model(torchbp.fuse(chain()), torchbp.nn.MSELoss(), *chain_data(5, (2, 3, 1)))
    assert not report.ok and "0.weight.grad" in [row.name for row in report.mismatches]


def shift(h, b):
    """h + b: a step with one tensor argument and no constant, a form the chain calls in its general way."""
    return h + b


def shift_backward(delta, h, b, need_h, need_b):
    return (delta if need_h else None, delta.sum(0) if need_b else None)


def shift_backward_wrong(delta, h, b, need_h, need_b):
    return (delta if need_h else None, 2 * delta.sum(0) if need_b else None)


@pytest.mark.parametrize("backward", [shift_backward, shift_backward_wrong], ids=["right", "wrong"])
def test_a_step_of_another_form_runs_through_the_general_call(backward, monkeypatch):
    monkeypatch.setitem(fused.STEPS, "shift", Step("shift", shift, backward, reads=None, arity=1))
    monkeypatch.setattr(fused, "_PLANS", {})
    assert fused.form_of(fused.STEPS["shift"]) == fused.GENERAL
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((5, 2), (3, 2), (3,))
    ]

    def chain_with_a_shift(x, w, b):
        return SequentialFunction.apply(x, ("linear", "sigmoid", "shift"), w, None, b)[-1]

    assert torch.autograd.gradcheck(chain_with_a_shift, inputs, raise_exception=False) == (backward is shift_backward)


FALLBACKS = {
    "a child torchbp cannot fuse": lambda m: torch.nn.Sequential(*m, torch.nn.ELU()),
    "a forward hook on a child": lambda m: (m[0].register_forward_hook(lambda *a: None), m)[1],
}


@pytest.mark.parametrize("case", FALLBACKS)
def test_falls_back_to_the_per_layer_path_and_stays_correct(case, monkeypatch):
    model = torchbp.fuse(FALLBACKS[case](chain()))
    calls = []
    monkeypatch.setattr(SequentialFunction, "apply", lambda *a: calls.append(1))
    report = check_model(model, torchbp.nn.MSELoss(), *chain_data(5, (2, 3, 1)))
    assert report.ok and calls == []


def test_per_sample_gradients_of_a_fused_model():
    model = torchbp.fuse(chain())
    x, y = chain_data(5, (2, 3, 1))
    grads = torchbp.per_sample_grads(model, torchbp.nn.MSELoss(reduction="sum"), x, y)
    model.zero_grad()
    torchbp.nn.MSELoss(reduction="sum")(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].sum(0), p.grad)


def test_under_autocast_the_per_layer_path_runs(monkeypatch):
    model = torchbp.fuse(chain(dtype=torch.float32))
    calls = []
    monkeypatch.setattr(SequentialFunction, "apply", lambda *a: calls.append(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(4, 2)).dtype == torch.bfloat16
    assert calls == []


def test_vmap_of_grad_over_a_fused_model():
    model = torchbp.fuse(chain())
    native = chain()
    x, y = chain_data(5, (2, 3, 1))
    params = {name: p.detach() for name, p in native.named_parameters()}

    def per_sample(m):
        loss = lambda p, xn, yn: torch.nn.functional.mse_loss(torch.func.functional_call(m, p, (xn,)), yn)  # noqa: E731
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    ours, theirs = per_sample(model), per_sample(native)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name])


def test_a_frozen_first_layer_ends_the_backward_early():
    model = torchbp.fuse(chain((4, 5, 3)))
    model[0].requires_grad_(False)
    x, y = chain_data(5, (4, 5, 3))
    torchbp.nn.MSELoss()(model(x), y).backward()
    assert model[0].weight.grad is None and model[2].weight.grad is not None
    assert check_model(model, torchbp.nn.MSELoss(), x, y).ok


@pytest.mark.parametrize("device", DEVICES)
def test_fused_model_on_each_device(device):
    model = torchbp.fuse(chain()).to(device)
    x, y = (t.to(device) for t in chain_data(5, (2, 3, 1)))
    assert check_model(model, torchbp.nn.MSELoss(), x, y).ok


def test_compiled_fused_model_has_no_graph_break():
    model = torchbp.fuse(chain(dtype=torch.float32))
    x, y = chain_data(5, (2, 3, 1), torch.float32)
    explanation = torch._dynamo.explain(lambda x, y: torchbp.nn.MSELoss()(model(x), y))(x, y)
    assert explanation.graph_break_count == 0


def test_a_forward_set_on_a_layer_instance_is_run_not_fused_past():
    fused, per_layer = torchbp.fuse(chain()), torchbp.convert(chain())
    for model in (fused, per_layer):
        original = model[0].forward
        model[0].forward = lambda x, original=original: original(x) * 0  # as layer-wrapping libraries do
    x, _ = chain_data(5, (2, 3, 1))
    assert torch.equal(fused(x), per_layer(x))


def test_a_weight_reassigned_as_a_plain_tensor_is_used():
    fused, per_layer = torchbp.fuse(chain()), torchbp.convert(chain())
    for model in (fused, per_layer):
        weight = model[0].weight.detach() * 2
        del model[0].weight
        model[0].weight = weight
    x, _ = chain_data(5, (2, 3, 1))
    assert torch.equal(fused(x), per_layer(x))


def test_a_fused_loss_built_on_a_native_mse_loss_runs_it_as_native(monkeypatch):
    # A native MSELoss broadcasts a target of another shape; torchbp's refuses it. Fusing it into the
    # chain only sometimes (not under a hook) would switch between the two: it is never fused.
    objective = torchbp.nn.FusedLoss(torchbp.fuse(chain()), torch.nn.MSELoss())
    kinds, original = [], SequentialFunction.apply
    monkeypatch.setattr(SequentialFunction, "apply", lambda x, k, *a: (kinds.append(k), original(x, k, *a))[1])
    x, y = chain_data(5, (2, 3, 1))
    assert torch.equal(objective(x, y), torch.nn.MSELoss()(chain()(x), y))
    assert kinds == [("linear", "sigmoid", "linear", "sigmoid")]  # the chain fused, the loss run as itself
