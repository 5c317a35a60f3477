"""torchbp models under torch.compile(fullgraph=True): no graph break, native gradients.

Compilation takes tens of seconds on 2 cores, so there are few of these tests, on a small model.
"""

import torch

import torchbp
from torchbp.compare import compare_tensors


def network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())


def data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(5, 2, generator=generator), torch.rand(5, 1, generator=generator)


def loss_and_grads(model, loss_fn, x, y):
    model.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_the_whole_step_traces_into_one_graph():
    hand = torchbp.convert(network())
    x, y = data()
    explanation = torch._dynamo.explain(lambda x, y: torchbp.nn.MSELoss()(hand(x), y))(x, y)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_model_matches_eager_torchbp_and_native_autograd():
    native = network()
    hand = torchbp.convert(native)
    x, y = data()
    compiled_step = torch.compile(lambda x, y: torchbp.nn.MSELoss()(hand(x), y), fullgraph=True, backend="inductor")
    hand.zero_grad()
    compiled_loss = compiled_step(x, y)
    compiled_loss.backward()
    compiled = (compiled_loss.detach(), {name: p.grad.clone() for name, p in hand.named_parameters()})
    eager = loss_and_grads(hand, torchbp.nn.MSELoss(), x, y)
    reference = loss_and_grads(native, torch.nn.MSELoss(), x, y)
    for other in (eager, reference):
        assert compare_tensors("loss", compiled[0], other[0]).ok
        for name, grad in other[1].items():
            row = compare_tensors(name, compiled[1][name], grad)
            assert row.ok, row


def test_every_layer_of_a_small_classifier_traces_into_one_graph():
    """digits-cnn's network and digits-layernorm's blocks: Conv2d, ReLU, LayerNorm, Tanh, Linear, cross-entropy."""
    torch.manual_seed(0)
    native = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 8),
        torch.nn.LayerNorm(8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
    )
    hand = torchbp.convert(native)
    x, labels = torch.randn(5, 1, 4, 4), torch.tensor([0, 2, 1, 1, 0])
    loss_fn = torchbp.nn.CrossEntropyLoss()
    explanation = torch._dynamo.explain(lambda x, t: loss_fn(hand(x), t))(x, labels)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(lambda x, t: loss_fn(hand(x), t), fullgraph=True, backend="aot_eager")
    loss = compiled(x, labels)
    loss.backward()
    grads = {name: p.grad for name, p in hand.named_parameters()}
    native_loss, native_grads = loss_and_grads(native, torch.nn.CrossEntropyLoss(), x, labels)
    assert compare_tensors("loss", loss, native_loss).ok
    assert all(compare_tensors(name, grads[name], native_grads[name]).ok for name in grads)
