"""Under torch.autocast torchbp layers give what native layers give: dtypes, and values within rounding."""

import pytest
import torch

import torchbp
from torchbp.compare import DEFAULT_RTOL, compare_tensors
from torchbp.functions import SigmoidFunction

AUTOCASTS = [("cpu", torch.bfloat16), ("cpu", torch.float16)]
if torch.cuda.is_available():
    AUTOCASTS.append(("cuda", torch.float16))


def network(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3), torch.nn.Sigmoid()).to(
        device
    )


def step(model, loss_fn, device, dtype):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=generator).to(device).requires_grad_()
    y = torch.rand(16, 3, generator=generator).to(device)
    with torch.autocast(device, dtype=dtype):
        output = model(x)
        loss = loss_fn(output, y)
    loss.backward()
    return output, loss, {"input": x.grad, **{name: p.grad for name, p in model.named_parameters()}}


@pytest.mark.parametrize("device, dtype", AUTOCASTS, ids=str)
def test_autocast_gives_native_dtypes_and_values(device, dtype):
    native = network(device)
    hand = torchbp.convert(native)
    ours, theirs = step(hand, torchbp.nn.MSELoss(), device, dtype), step(native, torch.nn.MSELoss(), device, dtype)
    assert ours[0].dtype == theirs[0].dtype == dtype  # the output of a linear layer
    assert ours[1].dtype == theirs[1].dtype == torch.float32  # the loss runs in float32
    rtol = DEFAULT_RTOL[dtype]  # gradients are float32, their precision that of the cast dtype
    for name, grad in theirs[2].items():
        assert ours[2][name].dtype == grad.dtype == torch.float32
        row = compare_tensors(name, ours[2][name], grad, rtol=rtol)
        assert row.ok, row
    assert compare_tensors("output", ours[0], theirs[0]).ok


def test_a_wrong_gradient_under_autocast_is_still_caught(monkeypatch):
    monkeypatch.setattr(SigmoidFunction, "backward", staticmethod(lambda ctx, grad_output: grad_output))
    native = network("cpu")
    ours, theirs = (
        step(torchbp.convert(native), torchbp.nn.MSELoss(), "cpu", torch.bfloat16),
        step(native, torch.nn.MSELoss(), "cpu", torch.bfloat16),
    )
    rtol = DEFAULT_RTOL[torch.bfloat16]
    assert not compare_tensors("0.weight", ours[2]["0.weight"], theirs[2]["0.weight"], rtol=rtol).ok


def test_float64_tensors_are_not_cast_as_in_native_autocast():
    x, w = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torchbp.functional.linear(x, w).dtype == torch.nn.functional.linear(x, w).dtype == torch.float64


def test_outside_autocast_nothing_is_cast():
    x, w = torch.randn(3, 4), torch.randn(2, 4)
    assert torchbp.functional.linear(x, w).dtype == torch.float32


def test_a_weight_that_is_no_tensor_is_named_under_autocast_as_outside_it():
    x = torch.randn(2, 2)
    with pytest.raises(TypeError, match=r"expected weight to be a torch\.Tensor, got list"):
        torchbp.functional.linear(x, [[1.0, 2.0]])
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(TypeError, match=r"expected weight to be a torch\.Tensor, got list"),
    ):
        torchbp.functional.linear(x, [[1.0, 2.0]])
