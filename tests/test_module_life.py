"""The usual life of a torch module, lived by torchbp models."""

import copy
import io
import pickle

import pytest
import torch

import torchbp
from torchbp.check import check_model

from conftest import DEVICES


def network(dtype=torch.float64):
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2), torch.nn.Sigmoid())
    return torchbp.convert(native.to(dtype))


def data(dtype=torch.float64, device="cpu"):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=generator, dtype=dtype), torch.rand(6, 2, generator=generator, dtype=dtype)
    return x.to(device), y.to(device)


def torch_save_load(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # a whole module, like a native one, needs weights_only=False


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save / torch.load": torch_save_load,
}


@pytest.mark.parametrize("how", COPIES)
def test_a_copied_model_keeps_its_torchbp_layers_and_parameters(how):
    model = network()
    copied = COPIES[how](model)
    assert [type(m) for m in copied.modules()] == [type(m) for m in model.modules()]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), copied.parameters()))
    assert check_model(copied, torchbp.nn.MSELoss(), *data()).ok


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_to_dtype_and_device_keeps_the_model_torchbp(dtype, device):
    model = network().to(dtype).to(device)
    assert isinstance(model[0], torchbp.nn.Linear) and model[0].weight.dtype == dtype
    assert model[0].weight.device.type == device
    report = check_model(model, torchbp.nn.MSELoss(), *data(dtype, device))
    assert report.ok, str(report)


def test_train_and_eval_switch_modes_without_changing_results():
    model = network()
    x, _ = data()
    train_output = model.train()(x)
    assert all(m.training for m in model.modules())
    eval_output = model.eval()(x)
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(eval_output, train_output, rtol=0, atol=0)  # no layer here behaves by mode


def test_frozen_parameters_get_no_gradient():
    model = network()
    model[0].weight.requires_grad_(False)
    x, y = data()
    torchbp.nn.MSELoss()(model(x), y).backward()
    assert model[0].weight.grad is None and model[0].bias.grad is not None
    report = check_model(model, torchbp.nn.MSELoss(), x, y)
    assert report.ok and "0.weight.grad" not in [row.name for row in report.rows]


def test_gradients_accumulate_over_several_backward_calls():
    model, native = network(), torchbp.to_native(network())
    x, y = data()
    for m, loss_fn in ((model, torchbp.nn.MSELoss()), (native, torch.nn.MSELoss())):
        for half in (slice(0, 3), slice(3, 6)):
            loss_fn(m(x[half]), y[half]).backward()
    for p, q in zip(model.parameters(), native.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)


def test_retain_graph_allows_a_second_backward_with_the_same_result():
    model = network()
    x, y = data()
    loss = torchbp.nn.MSELoss()(model(x), y)
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    loss.backward()
    for p, g in zip(model.parameters(), first):
        torch.testing.assert_close(p.grad, 2 * g)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_forward_without_autograd(context):
    model = network()
    x, _ = data()
    with context():
        output = model(x)
    assert not output.requires_grad
    torch.testing.assert_close(output, torchbp.to_native(model)(x).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("middle", [(), (4,), (2, 3)], ids=["2-d", "3-d", "4-d"])
def test_an_in_place_activation_after_a_linear_layer_works_as_natively(middle):
    """A Function's output that is a view refuses in-place writes; F.linear returns one for more than
    two dimensions, so LinearFunction returns a tensor that is not a view."""
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 2)).double()
    x = torch.randn(5, *middle, 3, dtype=torch.float64)
    check_model(native, torch.nn.MSELoss(), x, torch.randn(5, *middle, 2, dtype=torch.float64)).assert_ok()
