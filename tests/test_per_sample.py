"""Per-sample gradients from the hand-derived backward, against three references."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import torchbp
import torchbp.per_sample
from torchbp.compare import compare_tensors
from torchbp.lockstep import LockstepTrainer
from torchbp.per_sample import PerSampleGradients, per_sample_grad_norms, per_sample_grads


def mlp(bias=True, dtype=torch.float64, widths=(3, 4, 2)):
    torch.manual_seed(0)
    layers = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(n_in, n_out, bias=bias), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


def data(n, middle, dtype, widths=(3, 4, 2)):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *middle, widths[0], generator=generator, dtype=torch.float64).to(dtype)
    y = torch.randn(n, *middle, widths[-1], generator=generator, dtype=torch.float64).to(dtype)
    return x, y


def loop_reference(model, reduction, x, y):
    """One native backward per sample, each on a batch of one."""
    grads = {name: [] for name, p in model.named_parameters() if p.requires_grad}
    for n in range(len(x)):
        model.zero_grad()
        F.mse_loss(model(x[n : n + 1]), y[n : n + 1], reduction=reduction).backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                grads[name].append(p.grad.clone())
    return {
        name: torch.stack(g) if g else torch.zeros(0, *model.get_parameter(name).shape, dtype=x.dtype)
        for name, g in grads.items()
    }


def func_reference(model, reduction, x, y):
    """torch.func.vmap(torch.func.grad(...)) with functional_call on the native model."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def loss(params, x_n, y_n):
        output = torch.func.functional_call(model, params, (x_n[None],))
        return F.mse_loss(output, y_n[None], reduction=reduction)

    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)


def summed_reference(model, reduction, x, y):
    """The parameters' .grad; per-sample gradients must add up to it (sum) or average to it (mean)."""
    model.zero_grad()
    F.mse_loss(model(x), y, reduction=reduction).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_matches(ours: dict, reference: dict, rtol=None):
    assert list(ours) == list(reference)
    for name in reference:
        row = compare_tensors(name, ours[name], reference[name], rtol=rtol)
        assert row.ok, row


CASES = [
    dict(n=n, middle=middle, bias=bias, dtype=dtype, reduction=reduction)
    for n in (5, 1)
    for middle in ((), (3,))
    for bias in (True, False)
    for dtype in (torch.float32, torch.float64)
    for reduction in ("sum", "mean")
]


def case_id(case):
    layout = "3d" if case["middle"] else "2d"
    bias = "bias" if case["bias"] else "nobias"
    return f"N{case['n']}-{layout}-{bias}-{str(case['dtype'])[6:]}-{case['reduction']}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("reference", [loop_reference, func_reference], ids=["loop", "torch.func"])
def test_per_sample_grads_match_reference(case, reference):
    model = mlp(case["bias"], case["dtype"])
    x, y = data(case["n"], case["middle"], case["dtype"])
    ours = per_sample_grads(model, torch.nn.MSELoss(reduction=case["reduction"]), x, y)
    assert_matches(ours, reference(model, case["reduction"], x, y))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_per_sample_grads_add_up_to_the_gradient(case):
    model = mlp(case["bias"], case["dtype"])
    x, y = data(case["n"], case["middle"], case["dtype"])
    ours = per_sample_grads(model, torch.nn.MSELoss(reduction=case["reduction"]), x, y)
    combine = (lambda g: g.sum(0)) if case["reduction"] == "sum" else (lambda g: g.mean(0))
    assert_matches({k: combine(v) for k, v in ours.items()}, summed_reference(model, case["reduction"], x, y))


@pytest.mark.parametrize("middle", [(), (3,)], ids=["2d", "3d"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_an_empty_batch_gives_empty_per_sample_grads(middle, reduction):
    model = mlp()
    x, y = data(0, middle, torch.float64)
    ours = per_sample_grads(model, torch.nn.MSELoss(reduction=reduction), x, y)
    assert {k: v.shape for k, v in ours.items()} == {k: (0, *p.shape) for k, p in model.named_parameters()}
    assert per_sample_grad_norms(model, torch.nn.MSELoss(reduction=reduction), x, y).shape == (0,)


@given(
    n=st.integers(1, 6),
    middle=st.lists(st.integers(1, 3), max_size=2),
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_per_sample_grads_match_torch_func_for_any_shape(n, middle, widths, reduction):
    model = mlp(widths=tuple(widths))
    x, y = data(n, tuple(middle), torch.float64, widths=tuple(widths))
    ours = per_sample_grads(model, torch.nn.MSELoss(reduction=reduction), x, y)
    assert_matches(ours, func_reference(model, reduction, x, y))


def test_a_mean_loss_not_scaled_per_sample_is_caught(monkeypatch):
    monkeypatch.setattr(torchbp.per_sample, "reduction_scale", lambda loss_fn, n, target=None: 1.0)  # the planted error
    model = mlp()
    x, y = data(5, (), torch.float64)
    ours = per_sample_grads(model, torch.nn.MSELoss(reduction="mean"), x, y)
    reference = func_reference(model, "mean", x, y)
    assert not any(compare_tensors(k, ours[k], reference[k]).ok for k in reference)


@pytest.mark.parametrize(
    "middle, widths",
    [((), (3, 4, 2)), ((2,), (8, 8, 8)), ((20,), (3, 4, 2))],  # one row, Gram matrices, formed gradients
    ids=["2d", "3d-gram", "3d-formed"],
)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_per_sample_grad_norms_are_the_norms_of_the_gradients(middle, widths, reduction):
    model = mlp(widths=widths)
    x, y = data(5, middle, torch.float64, widths=widths)
    loss_fn = torch.nn.MSELoss(reduction=reduction)
    grads = per_sample_grads(model, loss_fn, x, y)
    expected = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))
    torch.testing.assert_close(per_sample_grad_norms(model, loss_fn, x, y), expected)


@pytest.mark.parametrize("middle, forms", [((), False), ((20,), True)], ids=["2d-input", "3d-input-long-t"])
def test_norms_form_the_gradients_only_where_the_layer_needs_it(monkeypatch, middle, forms):
    def refuse(*args):
        raise RuntimeError("formed an (N, out, in) gradient")

    monkeypatch.setattr(torchbp.layers.linear, "per_sample_weight_grads", refuse)
    call = lambda: per_sample_grad_norms(mlp(), torch.nn.MSELoss(), *data(5, middle, torch.float64))  # noqa: E731
    if forms:
        with pytest.raises(RuntimeError, match="formed"):
            call()
    else:
        call()


def test_a_layer_used_twice_adds_its_contributions():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3).double()
    model = torch.nn.Sequential(shared, torch.nn.Sigmoid(), shared)
    x, y = data(4, (), torch.float64, widths=(3, 3))
    loss_fn = torch.nn.MSELoss(reduction="sum")
    ours = per_sample_grads(model, loss_fn, x, y)
    assert_matches(ours, loop_reference(model, "sum", x, y))
    expected = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in ours.values()))
    torch.testing.assert_close(per_sample_grad_norms(model, loss_fn, x, y), expected)


def test_frozen_parameters_are_left_out():
    model = mlp()
    model[0].weight.requires_grad_(False)
    ours = per_sample_grads(model, torch.nn.MSELoss(), *data(5, (), torch.float64))
    assert "0.weight" not in ours
    assert_matches(ours, loop_reference(model, "mean", *data(5, (), torch.float64)))


def test_the_models_gradients_are_left_alone():
    model = torchbp.convert(mlp())
    per_sample_grads(model, torch.nn.MSELoss(), *data(5, (), torch.float64))
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())  # no hook outlives the call


def frozen_flags(model):
    return [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_the_parameters_require_grad_as_before_after_the_call(fails):
    """The recorded pass freezes the trainable parameters while it runs (no summed gradient is formed),
    and gives every flag back, also when the loss raises."""
    model = torchbp.convert(mlp())
    model[0].bias.requires_grad_(False)
    before = frozen_flags(model)
    x, y = data(5, (), torch.float64)

    def loss_fn(output, target):
        if fails:
            raise RuntimeError("the loss failed")
        return F.mse_loss(output, target)

    loss_fn.reduction = "mean"

    if fails:
        with pytest.raises(RuntimeError, match="the loss failed"):
            per_sample_grad_norms(model, loss_fn, x, y)
    else:
        per_sample_grad_norms(model, loss_fn, x, y)
    assert frozen_flags(model) == before


class ReadsAConstant(torch.nn.Module):
    """A layer applied to a constant as well as a layer on the inputs: its output does not depend on them."""

    def __init__(self, integer_inputs=False):
        super().__init__()
        torch.manual_seed(0)
        self.on_inputs, self.on_constant = torch.nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
        self.register_buffer("constant", torch.randn(5, 3, dtype=torch.float64))
        self.integer_inputs = integer_inputs

    def forward(self, x):
        return self.on_inputs(x.double()) + (0 if self.integer_inputs else self.on_constant(self.constant))


@pytest.mark.parametrize("integer_inputs", [False, True], ids=["a layer reads a constant", "integer inputs"])
def test_where_freezing_would_lose_a_layer_the_plain_pass_runs(integer_inputs):
    """Frozen parameters with inputs that require grad would leave a layer unrecorded (one whose output does
    not depend on the inputs), or every layer (inputs that cannot require grad): the pass then runs with
    the parameters as they are, and gives what the recorder gives around a plain backward."""
    model = torchbp.convert(ReadsAConstant(integer_inputs))
    x = torch.randint(-3, 4, (5, 3)) if integer_inputs else data(5, (), torch.float64)[0]
    y = torch.randn(5, 2, dtype=torch.float64)
    with PerSampleGradients(model) as recorder:
        F.mse_loss(model(x), y, reduction="sum").backward()
    expected = recorder.grads()
    assert len(expected) == (2 if integer_inputs else 4)
    assert_matches(per_sample_grads(model, torch.nn.MSELoss(reduction="sum"), x, y), expected)


def test_inside_the_context_the_ordinary_backward_still_gives_native_gradients():
    model = torchbp.convert(mlp())
    x, y = data(5, (), torch.float64)
    with PerSampleGradients(model, scale=1.0) as recorder:
        F.mse_loss(model(x), y, reduction="sum").backward()
    assert_matches({k: p.grad for k, p in model.named_parameters()}, summed_reference(mlp(), "sum", x, y))
    assert_matches({k: v.sum(0) for k, v in recorder.grads().items()}, summed_reference(mlp(), "sum", x, y))


def test_out_receives_the_results_in_place():
    model = mlp()
    x, y = data(5, (), torch.float64)
    first = per_sample_grads(model, torch.nn.MSELoss(), x, y)
    buffers = {name: torch.full_like(g, float("nan")) for name, g in first.items()}
    second = per_sample_grads(model, torch.nn.MSELoss(), x, y, out=buffers)
    assert all(second[name] is buffers[name] for name in first)
    assert_matches(second, first)


def test_out_accumulates_a_layer_used_twice_from_scratch():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3).double()
    model = torch.nn.Sequential(shared, torch.nn.Sigmoid(), shared)
    x, y = data(4, (), torch.float64, widths=(3, 3))
    expected = per_sample_grads(model, torch.nn.MSELoss(reduction="sum"), x, y)
    stale = {name: torch.full_like(g, 7.0) for name, g in expected.items()}
    assert_matches(per_sample_grads(model, torch.nn.MSELoss(reduction="sum"), x, y, out=stale), expected)


BAD_CALLS = {
    "a layer without a per-sample rule": (
        lambda: per_sample_grads(
            torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.PReLU(2)).double(),
            torch.nn.MSELoss(),
            *data(4, (), torch.float64, widths=(3, 2)),
        ),
        NotImplementedError,
        "no per-sample rule for 1 (PReLU); torchbp has rules for BatchNorm1d, BatchNorm2d, Conv2d, Embedding, "
        "GroupNorm, LayerNorm, Linear, MultiheadAttention only",
    ),
    "a loss without a reduction": (
        lambda: per_sample_grads(mlp(), lambda out, y: ((out - y) ** 2).sum(), *data(4, (), torch.float64)),
        ValueError,
        "reduction",
    ),
    "a loss with reduction none": (
        lambda: per_sample_grads(mlp(), torch.nn.MSELoss(reduction="none"), *data(4, (), torch.float64)),
        ValueError,
        "'none'",
    ),
    "out of the wrong shape": (
        lambda: per_sample_grads(
            mlp(),
            torch.nn.MSELoss(),
            *data(4, (), torch.float64),
            out={"0.weight": torch.zeros(5, 4, 3, dtype=torch.float64)},
        ),
        torchbp.ShapeError,
        "(4, 4, 3)",
    ),
    "out naming no parameter": (
        lambda: per_sample_grads(
            mlp(),
            torch.nn.MSELoss(),
            *data(4, (), torch.float64),
            out={"weight": torch.zeros(4, 4, 3, dtype=torch.float64)},
        ),
        KeyError,
        "weight",
    ),
    "inputs without a sample dimension": (
        lambda: per_sample_grads(
            mlp(), torch.nn.MSELoss(), torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
        ),
        torchbp.ShapeError,
        "expected inputs of shape (N, ...), the sample dimension first, got (3,)",
    ),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_clear_errors(case):
    call, error, words = BAD_CALLS[case]
    with pytest.raises(error, match=__import__("re").escape(words)):
        call()


def test_the_trainer_records_per_sample_gradients_on_due_steps(tmp_path):
    x, y = data(6, (), torch.float64)
    trainer = LockstepTrainer(
        mlp(), torch.nn.MSELoss(), lr=0.1, per_sample_every=2, log_dir=torchbp.new_run_dir(tmp_path, "t")
    )
    records = []
    trainer.train([(x, y)], steps=4, on_step=records.append)
    trainer.close()
    assert [r.per_sample is not None for r in records] == [True, False, True, False]
    grads = records[0].per_sample.grads()
    assert grads["0.weight"].shape == (6, 4, 3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trainer.log.run_dir / "hand"), size_guidance={"histograms": 0})
    events.Reload()
    assert [e.step for e in events.Histograms("per_sample/grad_norm")] == [0, 2]


def test_the_trainer_refuses_per_sample_gradients_for_a_loss_without_reduction():
    with pytest.raises(ValueError, match="reduction"):
        LockstepTrainer(mlp(), lambda out, y: ((out - y) ** 2).sum(), per_sample_every=1)


BAD_BUFFERS = {
    "an expanded buffer": lambda good: {**good, "0.bias": torch.zeros(1, 4, dtype=torch.float64).expand(5, 4)},
    "one buffer under two names": lambda good: {**good, "2.bias": good["0.bias"][:, :2]},
    "a transposed buffer": lambda good: {**good, "0.weight": torch.zeros(5, 3, 4, dtype=torch.float64).transpose(1, 2)},
}


@pytest.mark.parametrize("case", BAD_BUFFERS)
def test_out_buffers_that_would_be_written_over_are_refused(case):
    model, loss_fn = mlp(), torch.nn.MSELoss()
    x, y = data(5, (), torch.float64)
    good = per_sample_grads(model, loss_fn, x, y)
    with pytest.raises(ValueError, match="out\\["):
        per_sample_grads(model, loss_fn, x, y, out=BAD_BUFFERS[case](good))


def test_out_naming_a_frozen_parameter_is_refused():
    model = mlp()
    x, y = data(5, (), torch.float64)
    good = per_sample_grads(model, torch.nn.MSELoss(), x, y)
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="does not require grad"):
        per_sample_grads(model, torch.nn.MSELoss(), x, y, out=good)


@pytest.mark.parametrize("spatial", [(), (3, 2)], ids=["one target per sample", "a target per pixel"])
def test_mean_cross_entropy_with_ignored_targets_gives_each_samples_own_gradient(spatial):
    """The batch mean divides by every target not ignored, a sample's own loss by its own: the per-sample
    scale is their ratio, sample by sample (and a sample with none gets zero, as torch.func gives)."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1).double() if spatial else torch.nn.Linear(3, 4).double()
    x = torch.randn(6, 3, *spatial, dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 2, 3, 1]).view(6, *[1] * len(spatial)).expand(6, *spatial).clone()
    if spatial:
        target[0, 0, 0] = 1  # one ignored pixel in a sample that keeps others
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=1)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def own_loss(params, x_n, target_n):
        return loss_fn(torch.func.functional_call(model, params, (x_n[None],)), target_n[None])

    expected = torch.func.vmap(torch.func.grad(own_loss), in_dims=(None, 0, 0))(params, x, target)
    grads = per_sample_grads(model, loss_fn, x, target)
    for name in params:
        torch.testing.assert_close(grads[name], expected[name])


def test_the_norms_of_a_layer_called_twice_with_every_parameter_frozen_are_zero():
    """Its per-sample gradients sum to nothing, whether or not another layer's come before them."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3).double().requires_grad_(False)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)  # so that the layer's outputs require grad
    y = torch.randn(4, 3, dtype=torch.float64)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    alone = torch.nn.Sequential(shared, torch.nn.Sigmoid(), shared)
    torch.testing.assert_close(per_sample_grad_norms(alone, loss_fn, x, y), torch.zeros(4, dtype=torch.float64))
    after = torch.nn.Sequential(torch.nn.Linear(3, 3).double(), shared, torch.nn.Sigmoid(), shared)
    grads = per_sample_grads(after, loss_fn, x, y)
    assert set(grads) == {"0.weight", "0.bias"}
    expected = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))
    torch.testing.assert_close(per_sample_grad_norms(after, loss_fn, x, y), expected)
