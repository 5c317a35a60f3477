"""torchbp.fuse_loss: a network and its squared-error loss as one Function, equal to native autograd."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchbp
import torchbp.layers.mse_loss
from torchbp.compare import compare_tensors
from torchbp.functions import DTypeError, SequentialFunction, ShapeError
from torchbp.speed import fused

from conftest import chain, chain_data


def loss_and_gradients(loss_fn, parameters, x, y):
    """The loss, and the gradients of every parameter, of the input and of the target (a fixed
    random upstream gradient where the loss is not a scalar)."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = loss_fn(x, y)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(2), dtype=loss.dtype)
    grads = torch.autograd.grad(loss, [*parameters, x, y], upstream)
    return [loss.detach(), *grads]


def native_and_fused(widths=(2, 3, 1), bias=True, dtype=torch.float64, last_sigmoid=True, reduction="mean", scale=1.0):
    native = chain(widths, bias, dtype, last_sigmoid)
    native_loss = torch.nn.MSELoss(reduction=reduction)
    fused = torchbp.fuse_loss(native, native_loss, scale=scale)

    def reference(x, y):
        loss = native_loss(native(x), y)
        return loss if scale == 1 else scale * loss

    return (fused, list(fused.parameters())), (reference, list(native.parameters()))


def assert_identical(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # to the bit (an empty mean is NaN)


def assert_within_tolerance(ours, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        row = compare_tensors(f"loss and gradients [{i}]", a, b)
        assert row.ok, row


CASES = [
    dict(widths=widths, bias=bias, dtype=dtype, middle=middle, n=n, last_sigmoid=last, reduction=reduction, scale=scale)
    for widths in ((2, 3, 1), (4, 5, 5, 3))
    for bias in (True, False)
    for dtype in (torch.float32, torch.float64)
    for middle in ((), (3,))
    for n in (5, 0)
    for last in (True, False)
    for reduction, scale in (("mean", 1.0), ("sum", 0.5), ("none", 1.0), ("sum", 1.0))
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_loss_and_every_gradient_equal_native_autograd_to_the_bit(case):
    ours, theirs = native_and_fused(**{k: v for k, v in case.items() if k not in ("middle", "n")})
    x, y = chain_data(case["n"], case["widths"], case["dtype"], case["middle"])
    assert_identical(loss_and_gradients(*ours, x, y), loss_and_gradients(*theirs, x, y))


@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    n=st.integers(0, 4),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_loss_and_every_gradient_equal_native_autograd_for_any_shape(widths, n, reduction):
    # Within the project's tolerance: for some shapes (an input of width 1) native torch's linear
    # backward reaches a matrix product of other strides, which may add in another order.
    ours, theirs = native_and_fused(tuple(widths), reduction=reduction)
    x, y = chain_data(n, widths)
    assert_within_tolerance(loss_and_gradients(*ours, x, y), loss_and_gradients(*theirs, x, y))


def test_the_derivations_cost_is_one_node():
    fused = torchbp.fuse_loss(chain(bias=False), torch.nn.MSELoss(reduction="sum"), scale=0.5)
    loss = fused(*chain_data(5, (2, 3, 1)))
    assert type(loss.grad_fn).__name__ == "SequentialFunctionEagerBackward"
    assert {type(node).__name__ for node, _ in loss.grad_fn.next_functions if node is not None} == {"AccumulateGrad"}


def test_fuse_loss_copies_the_model_and_shares_parameters_with_its_model_child():
    native = chain()
    fused = torchbp.fuse_loss(native, torch.nn.MSELoss())
    assert type(fused) is torchbp.nn.FusedLoss and type(native) is torch.nn.Sequential
    assert type(fused.model) is torchbp.nn.Sequential and type(fused.loss_fn) is torchbp.nn.MSELoss
    assert list(fused.state_dict()) == [f"model.{key}" for key in native.state_dict()]
    assert [p is q for p, q in zip(fused.parameters(), fused.model.parameters())] == [True] * 4
    assert all(p is not q for p, q in zip(fused.parameters(), native.parameters()))
    assert repr(torchbp.fuse_loss(native, torch.nn.MSELoss(), scale=0.5)).startswith("torchbp.FusedLoss(\n  scale=0.5")


def test_inplace_fuses_the_given_model():
    native = chain()
    fused = torchbp.fuse_loss(native, torch.nn.MSELoss(), inplace=True)
    assert fused.model is native and type(native) is torchbp.nn.Sequential


def test_training_steps_follow_native_training_to_the_bit():
    native = chain(bias=False)
    fused = torchbp.fuse_loss(native, torch.nn.MSELoss(reduction="sum"), scale=0.5)
    x, y = chain_data(5, (2, 3, 1))
    steps = []
    half_sse = lambda x, y: 0.5 * torch.nn.MSELoss(reduction="sum")(native(x), y)  # noqa: E731
    for loss_fn, model in ((fused, fused), (half_sse, native)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(20):
            optimizer.zero_grad()
            loss_fn(x, y).backward()
            optimizer.step()
        steps.append([p.detach().clone() for p in model.parameters()])
    assert_identical(*steps)


def test_double_backward_matches_native():
    (fused, params), (reference, native_params) = native_and_fused(reduction="sum", scale=0.5)
    x, y = chain_data(5, (2, 3, 1))

    def gradient_norm_gradient(loss_fn, parameters):
        grads = torch.autograd.grad(loss_fn(x, y), parameters, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in grads), parameters)

    for ours, theirs in zip(gradient_norm_gradient(fused, params), gradient_norm_gradient(reference, native_params)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_and_gradgradcheck_of_the_chain_with_its_loss(reduction):
    generator = torch.Generator().manual_seed(0)
    x, w1, b1, w2, y = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((5, 2), (3, 2), (3,), (1, 3), (5, 1))
    )
    kinds = ("linear", "sigmoid", "linear", "sigmoid", "mse_loss", "scale")

    def loss(x, w1, b1, w2, y):
        return SequentialFunction.apply(x, kinds, w1, b1, w2, None, y, reduction, 0.5)[-1]

    assert torch.autograd.gradcheck(loss, (x, w1, b1, w2, y))
    assert torch.autograd.gradgradcheck(loss, (x, w1, b1, w2, y))


def test_a_wrong_loss_step_in_the_chain_is_caught(monkeypatch):
    right = torchbp.layers.mse_loss.mse_loss_backward

    def two_over_n_dropped(g, y_hat, y, reduction, *needs):
        return right(g, y_hat, y, "sum", *needs)  # (ŷ − y) · 2 ⊙ g: the mean's 1/N lost

    # the chain runs the step's own backward, taken from the table when the plans are made
    monkeypatch.setitem(fused.STEPS, "mse_loss", fused.STEPS["mse_loss"]._replace(backward=two_over_n_dropped))
    monkeypatch.setattr(fused, "_PLANS", {})
    ours, theirs = native_and_fused(reduction="mean")
    x, y = chain_data(5, (2, 3, 1))
    with pytest.raises(AssertionError):
        assert_identical(loss_and_gradients(*ours, x, y), loss_and_gradients(*theirs, x, y))


FALLBACKS = {
    "a child torchbp cannot fuse": lambda: (torch.nn.Sequential(*chain(), torch.nn.ELU()), torch.nn.MSELoss()),
    "a loss torchbp cannot fuse": lambda: (chain(), torch.nn.L1Loss()),
    "a model that is no Sequential": lambda: (torch.nn.Linear(2, 1).double(), torch.nn.MSELoss()),
    "a hook on a child": lambda: (_hooked(chain(), lambda m: m[0]), torch.nn.MSELoss()),
    "a hook on the model": lambda: (_hooked(chain(), lambda m: m), torch.nn.MSELoss()),
    "a hook on the loss": lambda: (chain(), _hooked(torch.nn.MSELoss(), lambda m: m)),
}


def _hooked(module, part):
    part(module).register_forward_hook(lambda *args: None)
    return module


@pytest.mark.parametrize("case", FALLBACKS)
def test_falls_back_to_loss_of_model_and_stays_equal_to_native(case, monkeypatch):
    model, loss_fn = FALLBACKS[case]()
    fused = torchbp.fuse_loss(model, loss_fn, scale=0.5)
    chains = []
    original = SequentialFunction.apply
    monkeypatch.setattr(
        SequentialFunction, "apply", lambda x, kinds, *a: chains.append(kinds) or original(x, kinds, *a)
    )
    x, y = chain_data(5, (2, 3, 1))

    def reference(x, y):
        return 0.5 * loss_fn(model(x), y)

    assert_identical(
        loss_and_gradients(fused, list(fused.parameters()), x, y),
        loss_and_gradients(reference, list(model.parameters()), x, y),
    )
    assert all("mse_loss" not in kinds for kinds in chains)  # the model alone may still run fused


def test_under_autocast_the_per_layer_path_runs(monkeypatch):
    fused = torchbp.fuse_loss(chain(dtype=torch.float32), torch.nn.MSELoss())
    calls = []
    monkeypatch.setattr(SequentialFunction, "apply", lambda *a: calls.append(1))
    x, y = chain_data(4, (2, 3, 1), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused(x, y)
    assert calls == [] and loss.dtype == torch.float32  # mse_loss runs in float32 under autocast


BAD_INPUT = {
    "a target of another shape": (
        lambda x, y: (x, y[:, 0]),
        ShapeError,
        r"mse_loss: expected target of the input's shape \(5, 1\), got \(5,\)",
    ),
    "a target of another dtype": (
        lambda x, y: (x, y.float()),
        DTypeError,
        "mse_loss: expected target to have the dtype of input",
    ),
    "an input of the wrong width": (
        lambda x, y: (x[:, :1], y),
        ShapeError,
        r"linear: expected input of shape \(\*, 2\)",
    ),
    "an integer input": (
        lambda x, y: (x.long(), y),
        DTypeError,
        "linear: expected input to be a floating-point tensor",
    ),
    "a target that is no tensor": (
        lambda x, y: (x, y.tolist()),
        TypeError,
        "mse_loss: expected target to be a torch.Tensor",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_with_the_per_layer_message(case):
    make, error, message = BAD_INPUT[case]
    fused = torchbp.fuse_loss(chain(), torch.nn.MSELoss())
    x, y = make(*chain_data(5, (2, 3, 1)))
    with pytest.raises(error, match=message):
        fused(x, y)


@pytest.mark.parametrize("scale", ["0.5", torch.tensor(0.5), True])
def test_a_scale_that_is_no_python_number_is_refused(scale):
    with pytest.raises(TypeError, match="scale: expected a Python float"):
        torchbp.fuse_loss(chain(), torch.nn.MSELoss(), scale=scale)


def test_torch_func_grad_and_vmap_of_grad_match_native():
    native = chain()
    fused = torchbp.fuse_loss(native, torch.nn.MSELoss(reduction="sum"), scale=0.5)
    x, y = chain_data(5, (2, 3, 1))
    params = {name: p.detach() for name, p in native.named_parameters()}

    def fused_loss(params, x, y):
        return torch.func.functional_call(fused, {f"model.{k}": v for k, v in params.items()}, (x, y))

    def native_loss(params, x, y):
        return 0.5 * torch.nn.functional.mse_loss(torch.func.functional_call(native, params, (x,)), y, reduction="sum")

    for transform in (
        lambda f: torch.func.grad(f)(params, x, y),
        lambda f: torch.func.vmap(torch.func.grad(f), in_dims=(None, 0, 0))(params, x[:, None], y[:, None]),
    ):
        theirs = transform(native_loss)
        for name, grad in transform(fused_loss).items():
            torch.testing.assert_close(grad, theirs[name], rtol=1e-12, atol=1e-15)


def test_compiled_fused_loss_has_no_graph_break_and_native_gradients():
    native = chain(dtype=torch.float32)
    fused = torchbp.fuse_loss(native, torch.nn.MSELoss(reduction="sum"), scale=0.5)
    x, y = chain_data(5, (2, 3, 1), torch.float32)
    assert torch._dynamo.explain(fused)(x, y).graph_break_count == 0
    compiled = torch.compile(fused, fullgraph=True, backend="inductor")
    ours = loss_and_gradients(compiled, list(fused.parameters()), x, y)
    theirs = loss_and_gradients(
        lambda x, y: 0.5 * torch.nn.MSELoss(reduction="sum")(native(x), y), list(native.parameters()), x, y
    )
    for name, a, b in zip(["loss", "0.weight", "0.bias", "2.weight", "2.bias", "input", "target"], ours, theirs):
        row = compare_tensors(name, a, b)
        assert row.ok, row


@pytest.mark.parametrize(
    "kinds", [("mse_loss", "linear"), ("linear", "softplus")], ids=["a layer after the loss", "an unknown step"]
)
def test_a_chain_that_is_no_chain_of_known_steps_is_refused(kinds):
    with pytest.raises(ValueError, match="expected steps of"):
        SequentialFunction.apply(torch.randn(5, 2), kinds, torch.randn(5, 2), "sum", torch.randn(3, 2), None)


def test_a_fused_loss_survives_deepcopy_pickle_and_to_native():
    import copy
    import pickle

    fused = torchbp.fuse_loss(chain(), torch.nn.MSELoss(reduction="sum"), scale=0.5)
    x, y = chain_data(5, (2, 3, 1))
    expected = fused(x, y)
    for other in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert torch.equal(other(x, y), expected)
    native = torchbp.to_native(fused)
    assert type(native.model) is torch.nn.Sequential and torch.equal(native(x, y), expected)
