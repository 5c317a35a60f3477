"""torchbp.speed.calls: the ctx-in-forward fast path is taken eagerly, never under transforms or the compiler,
and gives bit for bit the setup_context path's results, gradients and second gradients."""

import pytest
import torch

import torchbp.hand_derived
import torchbp.speed.calls
from torchbp.functions import LinearFunction, MSELossFunction, SequentialFunction, SigmoidFunction
from torchbp.hand_derived import HandDerivedFunction


def tensors(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True) for shape in shapes]


def chain_arguments(bias):
    x, w1, b1, w2, b2 = tensors((5, 2), (3, 2), (3,), (1, 3), (1,))
    return [x, ("linear", "sigmoid", "linear", "sigmoid"), w1, b1 if bias else None, w2, b2 if bias else None]


def chain_and_loss_arguments(reduction):
    x, w1, w2, y = tensors((5, 2), (3, 2), (1, 3), (5, 1))
    return [x, ("linear", "sigmoid", "linear", "sigmoid", "mse_loss", "scale"), w1, None, w2, None, y, reduction, 0.5]


# name: (Function, a function of nothing returning its arguments)
CASES = {
    "linear with bias": (LinearFunction, lambda: tensors((5, 2), (3, 2), (3,))),
    "linear without bias": (LinearFunction, lambda: [*tensors((5, 2), (3, 2)), None]),
    "linear, (n, t, i) input": (LinearFunction, lambda: tensors((4, 3, 2), (3, 2), (3,))),
    "sigmoid": (SigmoidFunction, lambda: tensors((5, 3))),
    **{
        f"mse_loss, {reduction}": (MSELossFunction, lambda reduction=reduction: [*tensors((5, 3), (5, 3)), reduction])
        for reduction in ("mean", "sum", "none")
    },
    "sequential with biases": (SequentialFunction, lambda: chain_arguments(bias=True)),
    "sequential without biases": (SequentialFunction, lambda: chain_arguments(bias=False)),
    **{
        f"sequential ending in the loss ({reduction}) and a scale": (
            SequentialFunction,
            lambda reduction=reduction: chain_and_loss_arguments(reduction),
        )
        for reduction in ("mean", "sum", "none")
    },
}


def full_apply(function, *args):
    """The setup_context path: torch.autograd.Function.apply itself."""
    return super(HandDerivedFunction, function).apply(*args)


def as_tuple(output):
    return output if isinstance(output, tuple) else (output,)


def outputs_and_gradients(apply, function, args):
    """Outputs, first gradients and second gradients of ``function`` applied by ``apply`` to ``args``."""
    outputs = as_tuple(apply(function, *args))
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    generator = torch.Generator().manual_seed(2)
    upstream = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outputs]
    first = torch.autograd.grad(outputs, inputs, upstream, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), inputs, allow_unused=True)
    return outputs, first, second


def eager_node(function):
    return f"{function.__name__}EagerBackward"


@pytest.mark.parametrize("case", CASES)
def test_the_fast_path_is_taken_eagerly(case):
    function, arguments = CASES[case]
    output = as_tuple(function.apply(*arguments()))[-1]
    assert type(output.grad_fn).__name__ == eager_node(function)


@pytest.mark.parametrize("case", CASES)
def test_the_fast_path_agrees_bit_for_bit_with_the_setup_context_path(case):
    function, arguments = CASES[case]
    fast = outputs_and_gradients(lambda f, *a: f.apply(*a), function, arguments())
    full = outputs_and_gradients(full_apply, function, arguments())
    assert type(fast[0][-1].grad_fn).__name__ == eager_node(function)
    assert type(full[0][-1].grad_fn).__name__ == f"{function.__name__}Backward"
    for kind, ours, theirs in zip(("output", "gradient", "second gradient"), fast, full):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert (a is None and b is None) or torch.equal(a, b), kind


def spy_on_the_fast_path(monkeypatch):
    calls = []
    unwrap = torchbp.speed.calls.unwrap_dead_wrappers  # called on the fast path alone, once a call
    monkeypatch.setattr(torchbp.hand_derived, "unwrap_dead_wrappers", lambda args: calls.append(1) or unwrap(args))
    return calls


def sigmoid_layer_loss(w, x):
    return MSELossFunction.apply(SigmoidFunction.apply(LinearFunction.apply(x, w, None)), torch.zeros(5, 3), "sum")


NOT_ENTERED = {
    "vmap": lambda w, x: torch.func.vmap(lambda x_n: sigmoid_layer_loss(w, x_n.expand(5, 2)))(x),
    "compile(fullgraph=True)": lambda w, x: torch.compile(sigmoid_layer_loss, fullgraph=True, backend="eager")(w, x),
    "keywords": lambda w, x: MSELossFunction.apply(
        SigmoidFunction.apply(input=LinearFunction.apply(x, weight=w, bias=None)), torch.zeros(5, 3), reduction="sum"
    ),
}


@pytest.mark.parametrize("how", NOT_ENTERED)
def test_under_vmap_the_compiler_and_keywords_the_fast_path_is_not_entered(how, monkeypatch):
    calls = spy_on_the_fast_path(monkeypatch)
    w, x = torch.randn(3, 2, requires_grad=True), torch.randn(5, 2)
    result = NOT_ENTERED[how](w, x)
    assert calls == []
    eagerly = sigmoid_layer_loss(w, x)
    assert calls == [1, 1, 1]  # the spy does see the fast path when it is taken
    if how != "vmap":
        assert torch.equal(result, eagerly)


GRADIENT_TRANSFORMS = {
    "grad": lambda f, w, x: torch.func.grad(f)(w, x),
    "jacrev of jacrev": lambda f, w, x: torch.func.jacrev(torch.func.jacrev(f))(w, x),
    "vmap of grad": lambda f, w, x: torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(w, x[:, None]),
}


@pytest.mark.parametrize("transform", GRADIENT_TRANSFORMS)
def test_gradient_transforms_record_the_setup_context_form(transform):
    # functorch builds its node from forward and setup_context ("…Generated"), then runs the forward
    # at the innermost level through plain apply, where the fast path may run as Function.apply would.
    nodes = []

    def loss(w, x):
        z = LinearFunction.apply(x, w, None)
        nodes.append(type(z.grad_fn).__name__)
        return SigmoidFunction.apply(z).sum()

    GRADIENT_TRANSFORMS[transform](loss, torch.randn(3, 2), torch.randn(5, 2))
    assert nodes and set(nodes) == {"LinearFunctionGeneratedBackward"}


def test_a_patched_backward_is_seen_by_the_fast_path(monkeypatch):
    monkeypatch.setattr(SigmoidFunction, "backward", staticmethod(lambda ctx, g: 2 * g))
    (z,) = tensors((3,))
    SigmoidFunction.apply(z).sum().backward()
    assert torch.equal(z.grad, torch.full((3,), 2.0, dtype=torch.float64))
