"""torch.func and torch.autograd.functional over torchbp models match native results."""

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacrev, vmap

import torchbp


def network(bias=True):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 3, bias=bias), torch.nn.Sigmoid(), torch.nn.Linear(3, 1, bias=bias), torch.nn.Sigmoid()
    ).double()


def data():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, 2, generator=generator, dtype=torch.float64)
    return x, torch.rand(5, 1, generator=generator, dtype=torch.float64)


def half_sse(model, loss_cls):
    loss_fn = loss_cls(reduction="sum")

    def loss(params, x, y):
        return 0.5 * loss_fn(functional_call(model, params, (x,)), y)

    return loss


def both(transform):
    """Apply ``transform`` to the torchbp and the native network's ½ SSE, from the same parameters."""
    native = network()
    hand = torchbp.convert(native)
    params = {name: p.detach() for name, p in native.named_parameters()}
    x, y = data()
    return (
        transform(half_sse(hand, torchbp.nn.MSELoss), params, x, y),
        transform(half_sse(native, torch.nn.MSELoss), params, x, y),
    )


TRANSFORMS = {
    "grad": lambda loss, params, x, y: grad(loss)(params, x, y),
    "vmap(grad)": lambda loss, params, x, y: vmap(grad(loss), in_dims=(None, 0, 0))(params, x[:, None], y[:, None]),
    "jacrev": lambda loss, params, x, y: jacrev(loss)(params, x, y),
    "hessian (jacrev of jacrev)": lambda loss, params, x, y: jacrev(jacrev(loss))(params, x, y),
    "hessian wrt the input (jacrev of jacrev)": lambda loss, params, x, y: jacrev(jacrev(lambda x: loss(params, x, y)))(
        x
    ),
    "vmap of the forward": lambda loss, params, x, y: vmap(lambda x_n: loss(params, x_n[None], y[:1]))(x),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transform_matches_native(transform):
    ours, theirs = both(TRANSFORMS[transform])
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("forward_mode", [hessian, torch.func.jacfwd], ids=["torch.func.hessian", "jacfwd"])
def test_forward_mode_transforms_are_refused_with_pytorchs_error(forward_mode):
    # Forward-mode AD needs a jvp staticmethod, which torch.compile(fullgraph=True) refuses;
    # torchbp keeps compile and offers jacrev(jacrev(f)) for Hessians.
    hand = torchbp.convert(network())
    x, _ = data()
    with pytest.raises(NotImplementedError, match="jvp"):
        forward_mode(lambda x: hand(x).sum())(x)


def test_a_wrong_backward_shows_in_the_hessian(monkeypatch):
    from torchbp.functions import SigmoidFunction

    twice_the_derivative = lambda ctx, g: g * 2 * (1 - ctx.saved_tensors[0]) * ctx.saved_tensors[0]  # noqa: E731
    monkeypatch.setattr(SigmoidFunction, "backward", staticmethod(twice_the_derivative))
    ours, theirs = both(TRANSFORMS["hessian (jacrev of jacrev)"])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_autograd_functional_hessian_of_the_derivations_network_matches_native():
    x, y = data()

    def loss_of_weights(model, loss_cls):
        def loss(w1, w2):
            out = functional_call(model, {"0.weight": w1, "2.weight": w2}, (x,))
            return 0.5 * loss_cls(reduction="sum")(out, y)

        return loss

    native = network(bias=False)
    weights = (native[0].weight.detach(), native[2].weight.detach())
    ours = torch.autograd.functional.hessian(loss_of_weights(torchbp.convert(native), torchbp.nn.MSELoss), weights)
    theirs = torch.autograd.functional.hessian(loss_of_weights(native, torch.nn.MSELoss), weights)
    for row_ours, row_theirs in zip(ours, theirs):
        for block_ours, block_theirs in zip(row_ours, row_theirs):
            torch.testing.assert_close(block_ours, block_theirs, rtol=1e-12, atol=1e-14)


def loss_of_input(loss_cls, model):
    y = torch.full((5, 1), 0.3, dtype=torch.float64)
    return lambda x: 0.5 * loss_cls(reduction="sum")(model(x), y)


BATCHED_GRADIENTS = {
    "autograd.grad(is_grads_batched=True)": lambda f, x: torch.autograd.grad(
        f(x.requires_grad_()), x, torch.eye(1, dtype=torch.float64).reshape(1).repeat(3), is_grads_batched=True
    )[0],
    "autograd.functional.jacobian(vectorize=True)": lambda f, x: torch.autograd.functional.jacobian(
        f, x, vectorize=True
    ),
    "autograd.functional.hessian(vectorize=True)": lambda f, x: torch.autograd.functional.hessian(f, x, vectorize=True),
    "jacrev under no_grad": lambda f, x: _no_grad(lambda: jacrev(f)(x)),
    "jacrev(jacrev) under no_grad": lambda f, x: _no_grad(lambda: jacrev(jacrev(f))(x)),
}


def _no_grad(fn):
    with torch.no_grad():
        return fn()


@pytest.mark.parametrize("how", BATCHED_GRADIENTS)
def test_batched_and_vectorised_gradients_match_native(how):
    native = network()
    x, _ = data()
    ours = BATCHED_GRADIENTS[how](loss_of_input(torchbp.nn.MSELoss, torchbp.convert(native)), x.clone())
    theirs = BATCHED_GRADIENTS[how](loss_of_input(torch.nn.MSELoss, native), x.clone())
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
