"""Dropout: the mask drawn as native draws it, so both sides of a comparison draw alike; ∂J/∂z = g ⊙ m / (1 − p).

Cases are data: probabilities, shapes and dtypes below, each run from one seed on both sides.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

import torchbp
import torchbp.functional as TF
from torchbp.functions import DropoutFunction
from torchbp.lockstep import LockstepTrainer

PROBABILITIES = [0.2, 0.5, 0.9, 1.0]
SHAPES = [(6, 5), (3, 4, 5), (7,), ()]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def values(*shape, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)


def run(dropout, x, p, seed=3, **options):
    """Output, input gradient (for an upstream gradient of 2 everywhere), and the random state's next draw."""
    torch.manual_seed(seed)
    leaf = x.clone().requires_grad_()
    y = dropout(leaf, p, **options)
    y.backward(torch.full_like(y, 2.0))
    return y.detach(), leaf.grad, torch.rand(3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", PROBABILITIES)
def test_draws_and_differentiates_as_native_does(p, shape, dtype):
    ours, native = run(TF.dropout, values(*shape, dtype=dtype), p), run(F.dropout, values(*shape, dtype=dtype), p)
    for mine, theirs in zip(ours, native):
        assert torch.equal(mine, theirs)  # the same mask, the same bits, and the same random state after


def test_a_transposed_input_draws_as_native_does():
    x = values(5, 4).t()
    for mine, theirs in zip(run(TF.dropout, x, 0.5), run(F.dropout, x, 0.5)):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("p", PROBABILITIES)
def test_the_backward_is_the_saved_factor(p):
    """∂J/∂z = g ⊙ m / (1 − p): zero where the output is zero, g / (1 − p) elsewhere."""
    x = values(50, 4).abs() + 1  # no zero among the inputs: the output is zero exactly where m is
    y, grad, _ = run(TF.dropout, x, p)
    kept = y != 0
    assert torch.equal(grad[~kept], torch.zeros_like(grad[~kept]))
    assert (kept.any() == (p < 1)) and (~kept).any()
    if p < 1:
        torch.testing.assert_close(grad[kept], torch.full_like(grad[kept], 2.0 / (1 - p)))


def test_a_planted_wrong_backward_is_caught(monkeypatch):
    """The mask left out of the backward: the gradient differs from native's, and gradcheck fails."""
    monkeypatch.setattr(DropoutFunction, "backward", staticmethod(lambda ctx, g, _: (g / 0.5, None)))
    ours, native = run(TF.dropout, values(6, 5), 0.5), run(F.dropout, values(6, 5), 0.5)
    assert torch.equal(ours[0], native[0]) and not torch.equal(ours[1], native[1])
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda z: (torch.manual_seed(0), TF.dropout(z, 0.5))[1], values(6, 5).requires_grad_())


def test_gradcheck_passes_from_a_fixed_seed():
    assert torch.autograd.gradcheck(
        lambda z: (torch.manual_seed(0), TF.dropout(z, 0.5))[1], values(6, 5).requires_grad_()
    )


def test_torchbp_verify_passes_where_its_checks_apply_to_a_random_function():
    """verify compares runs of a deterministic function: the seed goes inside. vmap raises for a random
    operation in its default randomness mode (native's dropout too), a seed inside breaks torch.compile's graph
    (compiled dropout is tested in tests/test_compile.py), and inputs of other layouts draw their masks in
    memory order."""

    def seeded(dropout):
        return lambda z: (torch.manual_seed(0), dropout(z, 0.5))[1]

    skip = ("vmap", "vmap-grad", "compile", "compile-dynamic", "non-contiguous")
    torchbp.verify(seeded(TF.dropout), seeded(F.dropout), values(6, 4), skip=skip).assert_ok()


@pytest.mark.parametrize("case", ["eval", "p = 0", "empty"])
def test_where_native_returns_the_input_itself_so_does_torchbp(case):
    x = values(0, 3) if case == "empty" else values(4, 3)
    p, training = (0.0, True) if case == "p = 0" else (0.5, case != "eval")
    state = torch.get_rng_state()
    assert TF.dropout(x, p, training) is x and F.dropout(x, p, training) is x
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_a_probability_outside_0_to_1_is_refused_as_natively(p):
    with pytest.raises(ValueError, match=f"between 0 and 1, but got {p}"):
        TF.dropout(values(3), p)
    with pytest.raises(ValueError, match=f"between 0 and 1, but got {p}"):
        torchbp.nn.Dropout(p)


def test_an_integer_input_is_refused():
    with pytest.raises(torchbp.DTypeError, match="dropout: expected input to be a floating-point tensor"):
        TF.dropout(torch.arange(6), 0.5)


def test_inplace_writes_into_the_input_as_natively():
    ours, native = values(4, 3).clone(), values(4, 3).clone()
    torch.manual_seed(0)
    assert TF.dropout(ours, 0.5, inplace=True) is ours
    torch.manual_seed(0)
    F.dropout(native, 0.5, inplace=True)
    assert torch.equal(ours, native)


def test_the_module_is_a_drop_in_and_a_lockstep_run_with_dropout_matches():
    """The trainer replays the random state for the native side, so both models draw the same masks: every
    step's loss and gradients match, in training mode; in eval mode dropout is the identity on both sides."""
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2)).double()
    converted = torchbp.convert(native)
    assert type(converted[1]) is torchbp.nn.Dropout and converted[1].p == 0.3
    assert type(torchbp.to_native(converted)[1]) is torch.nn.Dropout
    trainer = LockstepTrainer(native, torch.nn.MSELoss(), lr=0.1)
    records = [trainer.step(values(6, 4), values(6, 2)) for _ in range(5)]
    assert all(record.report.ok and record.max_grad_error == 0 for record in records)
    assert len({record.hand_loss for record in records}) == 5  # each step drew another mask
    assert "1 Dropout" in str(torchbp.check_model(native.eval(), torch.nn.MSELoss(), values(6, 4), values(6, 2)))
