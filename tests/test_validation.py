"""Bad input gets a clear error naming what was expected and what came; never a wrong answer."""

import pytest
import torch
import torch.nn.functional as F

import torchbp
from torchbp.check import check_function
from torchbp.functional import linear, mse_loss, sigmoid

f32, f64 = torch.float32, torch.float64

BAD_INPUTS = {
    "linear: input features differ from weight": (
        lambda: linear(torch.randn(5, 3), torch.randn(4, 2)),
        torchbp.ShapeError,
        ["(5, 3)", "(4, 2)", "(*, 2)"],
    ),
    "linear: 0-d input": (lambda: linear(torch.tensor(1.0), torch.randn(4, 1)), torchbp.ShapeError, ["()"]),
    "linear: 1-D weight": (
        lambda: linear(torch.randn(5, 3), torch.randn(3)),
        torchbp.ShapeError,
        ["(3,)", "(out_features, in_features)"],
    ),
    "linear: bias of the wrong size": (
        lambda: linear(torch.randn(5, 3), torch.randn(4, 3), torch.randn(3)),
        torchbp.ShapeError,
        ["(4,)", "(3,)"],
    ),
    "linear: integer input": (
        lambda: linear(torch.ones(5, 3, dtype=torch.int64), torch.randn(4, 3)),
        torchbp.DTypeError,
        ["floating-point", "torch.int64"],
    ),
    "linear: float64 weight with a float32 input": (
        lambda: linear(torch.randn(5, 3), torch.randn(4, 3, dtype=f64)),
        torchbp.DTypeError,
        ["torch.float32", "torch.float64"],
    ),
    "linear: bias of another dtype": (
        lambda: linear(torch.randn(5, 3), torch.randn(4, 3), torch.randn(4, dtype=f64)),
        torchbp.DTypeError,
        ["bias", "torch.float64"],
    ),
    "linear: weight on another device": (
        lambda: linear(torch.randn(5, 3), torch.randn(4, 3, device="meta")),
        torchbp.DeviceError,
        ["cpu", "meta"],
    ),
    "linear: not a tensor": (lambda: linear([[1.0, 2.0]], torch.randn(4, 2)), TypeError, ["torch.Tensor", "list"]),
    "sigmoid: integer input": (lambda: sigmoid(torch.ones(3, dtype=torch.int32)), torchbp.DTypeError, ["torch.int32"]),
    "sigmoid: complex input": (
        lambda: sigmoid(torch.ones(3, dtype=torch.complex64)),
        torchbp.DTypeError,
        ["complex64"],
    ),
    "mse_loss: target of another shape": (
        lambda: mse_loss(torch.randn(5, 1), torch.randn(5)),
        torchbp.ShapeError,
        ["(5, 1)", "(5,)"],
    ),
    "mse_loss: broadcastable target": (
        lambda: mse_loss(torch.randn(5, 3), torch.randn(1, 3)),
        torchbp.ShapeError,
        ["(5, 3)", "(1, 3)"],
    ),
    "mse_loss: integer target": (
        lambda: mse_loss(torch.randn(3), torch.ones(3, dtype=torch.int64)),
        torchbp.DTypeError,
        ["target", "torch.int64"],
    ),
    "mse_loss: target of another dtype": (
        lambda: mse_loss(torch.randn(3), torch.randn(3, dtype=f64)),
        torchbp.DTypeError,
        ["torch.float32", "torch.float64"],
    ),
    "mse_loss: unknown reduction": (
        lambda: mse_loss(torch.randn(3), torch.randn(3), reduction="average"),
        ValueError,
        ["average is not a valid value for reduction"],
    ),
    "mse_loss: weight=": (
        lambda: mse_loss(torch.randn(3), torch.randn(3), weight=torch.ones(3)),
        NotImplementedError,
        ["weight"],
    ),
    "module: Linear on the wrong width": (
        lambda: torchbp.nn.Linear(3, 2)(torch.randn(4, 5)),
        torchbp.ShapeError,
        ["(4, 5)", "(*, 3)"],
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    call, error, words = BAD_INPUTS[case]
    with pytest.raises(error) as raised:
        call()
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in BAD_INPUTS
        if issubclass(BAD_INPUTS[c][1], (torchbp.ShapeError, torchbp.DTypeError, torchbp.DeviceError))
    ],
)
def test_torchbp_errors_are_runtime_errors_like_native_torchs(case):
    call, _, _ = BAD_INPUTS[case]
    with pytest.raises(RuntimeError):
        call()


NONFINITE = {
    "linear": (linear, F.linear, lambda x: (x, torch.randn(3, 4, dtype=f64, requires_grad=True))),
    "sigmoid": (sigmoid, torch.sigmoid, lambda x: (x,)),
    "mse_loss": (mse_loss, F.mse_loss, lambda x: (x, torch.randn(5, 4, dtype=f64))),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("case", NONFINITE)
def test_nan_and_inf_flow_through_as_in_native_torch(case, value):
    ours, native, make_inputs = NONFINITE[case]
    x = torch.randn(5, 4, dtype=f64)
    x[1, 2] = value
    report = check_function(ours, native, *make_inputs(x.requires_grad_()))
    assert report.ok, str(report)


def test_legacy_mse_arguments_select_the_reduction_as_in_torch():
    x, y = torch.randn(4), torch.randn(4)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        torch.testing.assert_close(mse_loss(x, y, size_average=False), F.mse_loss(x, y, reduction="sum"))
