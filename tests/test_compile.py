"""torchbp models under torch.compile(fullgraph=True): no graph break, native gradients.

Compilation takes seconds on 2 cores, so these tests use small models: one per layer of the table, and
the experiments' own.
"""

import importlib
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

import torchbp
import torchbp.layers.conv2d as conv2d_module
from torchbp.compare import compare_tensors
from torchbp.layers import LAYERS


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


# -- compiled training when the batch size changes ---------------------------------------------------------
#
# An epoch's last batch is often smaller, and torch.compile then recompiles with the batch size symbolic;
# dynamic=True makes it symbolic from the first call. Each case below is a small model and its loss; the
# torchbp side is converted (or fused) from the native one and both are compiled the same way, with inductor.


class Case(NamedTuple):
    model: Callable[[], torch.nn.Module]
    loss: Callable[[], torch.nn.Module]
    input: tuple[int, ...]  # one sample's shape
    target: Callable[[torch.Tensor], torch.Tensor]  # from the native model's output


def like(output):
    return torch.randn_like(output)


def classes(output):
    return torch.randint(0, output.shape[1], output.shape[:1])


Seq, L = torch.nn.Sequential, torch.nn


class Indices(L.Module):
    """Inputs (N, 4) as indices into ``rows`` rows: the compiled cases draw float inputs."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def forward(self, x):
        return (x.abs() * 2).long().clamp(max=self.rows - 1)


class SelfAttention(L.Module):
    """Inputs (N, 8) as two tokens of width 4, each attending to both: a MultiheadAttention of two heads."""

    def __init__(self):
        super().__init__()
        self.attention = L.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        tokens = x.unflatten(1, (2, 4))
        return self.attention(tokens, tokens, tokens, need_weights=False)[0].flatten(1)


LAYER_CASES = {
    "linear": Case(lambda: Seq(L.Linear(4, 3)), L.MSELoss, (4,), like),
    "sigmoid": Case(lambda: Seq(L.Linear(4, 3), L.Sigmoid()), L.MSELoss, (4,), like),
    "tanh": Case(lambda: Seq(L.Linear(4, 3), L.Tanh()), L.MSELoss, (4,), like),
    "relu": Case(lambda: Seq(L.Linear(4, 3), L.ReLU()), L.MSELoss, (4,), like),
    "embedding": Case(lambda: Seq(Indices(5), L.Embedding(5, 3), L.Flatten(), L.Linear(12, 3)), L.MSELoss, (4,), like),
    "multihead_attention": Case(lambda: Seq(SelfAttention(), L.Linear(8, 3)), L.MSELoss, (8,), like),
    "dropout": Case(lambda: Seq(L.Linear(4, 6), L.Dropout(0.5), L.Linear(6, 3)), L.MSELoss, (4,), like),
    "softmax": Case(lambda: Seq(L.Linear(4, 3), L.Softmax(1), L.Linear(3, 3), L.LogSoftmax(-1)), L.MSELoss, (4,), like),
    "gelu": Case(lambda: Seq(L.Linear(4, 3), L.GELU(), L.Linear(3, 3), L.GELU("tanh")), L.MSELoss, (4,), like),
    "layer_norm": Case(lambda: Seq(L.Linear(4, 6), L.LayerNorm(6)), L.MSELoss, (4,), like),
    # one input channel, then one output channel: the shapes whose transposes have equal strides
    "conv2d": Case(
        lambda: Seq(L.Conv2d(1, 2, 3, padding=1), L.Conv2d(2, 1, 3, stride=2), L.Flatten()), L.MSELoss, (1, 6, 6), like
    ),
    "max_pool2d": Case(
        lambda: Seq(L.Conv2d(1, 2, 3, padding=1), L.MaxPool2d(3, stride=2, padding=1), L.Flatten()),
        L.MSELoss,
        (1, 6, 6),
        like,
    ),
    "avg_pool2d": Case(
        lambda: Seq(
            L.Conv2d(1, 2, 3, padding=1), L.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), L.Flatten()
        ),
        L.MSELoss,
        (1, 6, 6),
        like,
    ),
    "adaptive_avg_pool2d": Case(
        lambda: Seq(L.Conv2d(1, 2, 3, padding=1), L.AdaptiveAvgPool2d((4, 3)), L.Flatten()), L.MSELoss, (1, 7, 6), like
    ),
    # No bias right before a batch norm (as in a ResNet): the normalisation takes its gradient to exactly 0, and
    # two roundings of 0 compare as unequal.
    "batch_norm": Case(
        lambda: Seq(
            L.Conv2d(1, 2, 3, padding=1, bias=False),
            L.BatchNorm2d(2),
            L.ReLU(),
            L.Flatten(),
            L.Linear(72, 4, bias=False),
            L.BatchNorm1d(4),
        ),
        L.MSELoss,
        (1, 6, 6),
        like,
    ),
    "group_norm": Case(
        lambda: Seq(L.Conv2d(1, 4, 3, padding=1), L.GroupNorm(2, 4), L.Flatten()), L.MSELoss, (1, 4, 4), like
    ),
    "mse_loss": Case(lambda: Seq(L.Linear(4, 3)), lambda: L.MSELoss(reduction="sum"), (4,), like),
    "cross_entropy": Case(lambda: Seq(L.Linear(4, 3)), L.CrossEntropyLoss, (4,), classes),
}
# Batch sizes unlike any other size of the inputs: torch.compile gives sizes of equal value one symbol, and
# torch 2.13's graph cache can then hand a recompilation a graph that assumed them equal.
SIZES = {"a smaller last batch": (5, 5, 3), "dynamic=True": (5, 3)}


def module_types(case):
    return {type(m) for m in case.model().modules()} | {type(case.loss())}


def test_every_layer_of_the_table_has_a_compiled_case():
    covered = set().union(*(module_types(case) for case in LAYER_CASES.values()))
    missing = [layer.native.__name__ for layer in LAYERS if layer.native not in covered]
    assert not missing, f"add a case to LAYER_CASES for {missing}"


def compiled_steps(model, loss_fn, batches, dynamic):
    """Loss and gradients of each batch through ``torch.compile(model, dynamic=dynamic)``: compiled whole,
    from a clean slate (Sequential.forward is one code object for every model, and past the recompile
    limit torch.compile would quietly run it eagerly). Without a ``loss_fn``, the model is given the target
    too and returns the loss (as torchbp.fuse_loss's does)."""
    torch._dynamo.reset()
    torch.manual_seed(0)  # both sides draw their dropout masks from one random state
    compiled = torch.compile(model, dynamic=dynamic, fullgraph=True)
    results = []
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for x, target in batches:
            model.zero_grad(set_to_none=True)
            loss = compiled(x, target) if loss_fn is None else loss_fn(compiled(x), target)
            loss.backward()
            results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    return results


def mismatches(native, hand, loss_fn, hand_loss_fn, batches, dynamic):
    """Where torchbp compiled differs from native compiled, batch by batch: [] when they agree."""
    found = []
    expected = compiled_steps(native, loss_fn, batches, dynamic)
    actual = compiled_steps(hand, hand_loss_fn, batches, dynamic)
    for (x, _), (loss, grads), (native_loss, native_grads) in zip(batches, actual, expected):
        rows = [compare_tensors("loss", loss, native_loss)]
        rows += [compare_tensors(name, grads[name], native_grads[name]) for name in native_grads]
        found += [f"batch of {x.shape[0]}: {row}" for row in rows if not row.ok]
    return found


def batches_for(case, native, sizes):
    generator = torch.Generator().manual_seed(2)
    batches = []
    for n in sizes:
        x = torch.randn(n, *case.input, generator=generator, dtype=torch.float64)
        torch.manual_seed(n)
        batches.append((x, case.target(native(x).detach())))
    return batches


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("name", LAYER_CASES)
def test_every_layer_compiled_matches_native_compiled_as_the_batch_size_changes(name, sizes):
    case = LAYER_CASES[name]
    torch.manual_seed(0)
    native, loss_fn = case.model().double(), case.loss()
    hand, hand_loss_fn = torchbp.convert(native), torchbp.convert(loss_fn)
    batches = batches_for(case, native, sizes)
    assert mismatches(native, hand, loss_fn, hand_loss_fn, batches, dynamic=len(sizes) == 2 or None) == []


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_the_fused_chain_compiled_matches_native_compiled_as_the_batch_size_changes(sizes):
    case = Case(lambda: Seq(L.Linear(4, 5), L.Sigmoid(), L.Linear(5, 3), L.Tanh()), L.MSELoss, (4,), like)
    torch.manual_seed(0)
    native, loss_fn = case.model().double(), case.loss()
    hand, hand_loss_fn = torchbp.fuse(native), torchbp.convert(loss_fn)
    batches = batches_for(case, native, sizes)
    assert mismatches(native, hand, loss_fn, hand_loss_fn, batches, dynamic=len(sizes) == 2 or None) == []


# Compiled, Conv2d's weight gradient is one contraction over the windows up to a size, and above it the
# operator torchbp::conv2d_weight_gradient, which runs weight_gradient_by_convolution at each call.
CONV_ROUTES = {"one contraction": 10**9, "the operator": -1}


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("route", CONV_ROUTES)
@pytest.mark.parametrize("planted", [False, True], ids=["right", "∂J/∂W 1 % off in the operator"])
def test_compiled_conv2d_weight_gradient_by_either_route(route, sizes, planted, monkeypatch):
    calls = []
    right = conv2d_module.weight_gradient_by_convolution

    def counted(*args):
        calls.append(args[0].shape[0])
        return right(*args) * (1.01 if planted else 1)

    monkeypatch.setattr(conv2d_module, "COMPILED_CONTRACTION_LIMIT", CONV_ROUTES[route])
    monkeypatch.setattr(conv2d_module, "weight_gradient_by_convolution", counted)
    case = LAYER_CASES["conv2d"]
    torch.manual_seed(0)
    native, loss_fn = case.model().double(), case.loss()
    hand, hand_loss_fn = torchbp.convert(native), torchbp.convert(loss_fn)
    batches = batches_for(case, native, sizes)
    found = mismatches(native, hand, loss_fn, hand_loss_fn, batches, dynamic=len(sizes) == 2 or None)
    if route == "one contraction":
        assert calls == [] and found == []
    else:
        assert calls == [n for n in sizes for _ in range(2)]  # each batch, each of the two convolutions
        assert (found != []) == planted


class ScaledBackward(torch.autograd.Function):
    """The identity, whose backward is off by 1 %: a wrong gradient for the check below to find."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


class WrongLinear(torch.nn.Linear):
    def forward(self, input):
        return ScaledBackward.apply(super().forward(input))


def test_the_compiled_comparison_finds_a_wrong_gradient():
    case = LAYER_CASES["linear"]
    torch.manual_seed(0)
    native, loss_fn = case.model().double(), case.loss()
    wrong = Seq(WrongLinear(4, 3).double())
    wrong.load_state_dict(native.state_dict())
    batches = batches_for(case, native, SIZES["a smaller last batch"])
    found = mismatches(native, wrong, loss_fn, loss_fn, batches, dynamic=None)
    assert len(found) == 6 and all("loss" not in row.split(":")[1] for row in found)  # weight and bias, each batch


def the_experiments():
    importlib.import_module("experiments.__main__")  # each experiment registers itself as it is imported
    from experiments.lab.registry import EXPERIMENTS

    return EXPERIMENTS


@pytest.mark.parametrize("dynamic", [None, True], ids=["a smaller last batch", "dynamic=True"])
@pytest.mark.parametrize("name", sorted(the_experiments()))
def test_every_experiment_model_compiled_matches_native_compiled_as_the_batch_size_changes(name, dynamic):
    experiment = the_experiments()[name]
    setup = experiment.build(experiment.defaults)
    native, loss_fn = setup.model, setup.loss_fn
    x, target = next(iter(setup.batches))
    big, small = [n for n in range(x.shape[0], 0, -1) if n not in x.shape[1:]][:2]  # see SIZES
    sizes = (big, big, small) if dynamic is None else (big, small)
    batches = [(x[:size], target[:size]) for size in sizes]
    hand, hand_loss_fn = torchbp.convert(native), torchbp.convert(loss_fn)
    assert mismatches(native, hand, loss_fn, hand_loss_fn, batches, dynamic) == []


def test_a_multilayer_perceptron_then_a_convolutional_network_compiled_in_one_process():
    """Each compiled through a smaller last batch, one after the other (the second once failed)."""
    torch.manual_seed(0)
    for native, shape in (
        (Seq(L.Linear(64, 16), L.ReLU(), L.Linear(16, 10)), (64,)),
        (Seq(L.Conv2d(1, 4, 3, padding=1), L.ReLU(), L.Flatten(), L.Linear(4 * 64, 10)), (1, 8, 8)),
    ):
        case = Case(lambda native=native: native, L.CrossEntropyLoss, shape, classes)
        native = native.double()
        batches = batches_for(case, native, (7, 7, 5))
        hand = torchbp.convert(native)
        assert mismatches(native, hand, L.CrossEntropyLoss(), torchbp.nn.CrossEntropyLoss(), batches, None) == []


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_the_network_and_loss_as_one_node_compiled_match_native_as_the_batch_size_changes(sizes):
    """torchbp.fuse_loss compiled whole against ½ Σ (y − ŷ)² of the native network, compiled the same way."""
    torch.manual_seed(0)
    native = Seq(L.Linear(4, 5), L.Sigmoid(), L.Linear(5, 3)).double()
    objective = torchbp.fuse_loss(native, L.MSELoss(reduction="sum"), scale=0.5)

    class HalfSumSquaredError(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = native

        def forward(self, x, y):
            return 0.5 * torch.nn.functional.mse_loss(self.model(x), y, reduction="sum")

    case = Case(lambda: native, L.MSELoss, (4,), like)
    batches = batches_for(case, native, sizes)
    dynamic = len(sizes) == 2 or None
    assert mismatches(HalfSumSquaredError(), objective, None, None, batches, dynamic) == []
