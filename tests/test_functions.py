"""Each hand-derived Function against native autograd: shapes, dtypes, layouts, transforms."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.gradcheck import GradcheckError

import torchbp
from torchbp.check import check_function
from torchbp.functional import linear, mse_loss, sigmoid

from conftest import DEVICES

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LEADING_SHAPES = [(), (5,), (3, 4), (0,), (2, 0)]  # 1-D input, batch, extra dims, empty batches
REDUCTIONS = ["mean", "sum", "none"]


def leaf(*shape, dtype=torch.float64, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device).requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=str)
def test_linear_matches_native(leading, bias, dtype, device):
    x, w = leaf(*leading, 4, dtype=dtype, device=device), leaf(3, 4, dtype=dtype, device=device)
    b = leaf(3, dtype=dtype, device=device) if bias else None
    check_function(linear, F.linear, x, w, b).assert_ok()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (0, 3), (2, 3, 4)], ids=str)
def test_sigmoid_matches_native(shape, dtype, device):
    check_function(sigmoid, torch.sigmoid, leaf(*shape, dtype=dtype, device=device)).assert_ok()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4)], ids=str)
def test_mse_loss_matches_native(shape, reduction, dtype, device):
    ours = lambda x, y: mse_loss(x, y, reduction=reduction)  # noqa: E731
    native = lambda x, y: F.mse_loss(x, y, reduction=reduction)  # noqa: E731
    x, y = leaf(*shape, dtype=dtype, device=device), leaf(*shape, dtype=dtype, device=device)
    check_function(ours, native, x, y).assert_ok()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_of_an_empty_batch_matches_native(reduction):
    # The mean of nothing is NaN in native torch; its gradient is an empty tensor.
    ours = lambda x, y: mse_loss(x, y, reduction=reduction)  # noqa: E731
    native = lambda x, y: F.mse_loss(x, y, reduction=reduction)  # noqa: E731
    check_function(ours, native, leaf(0, 3), leaf(0, 3)).assert_ok()


@given(
    leading=st.lists(st.integers(0, 4), max_size=3),
    in_features=st.integers(0, 6),
    out_features=st.integers(0, 6),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_linear_matches_native_for_any_shape(leading, in_features, out_features, bias, dtype):
    x = leaf(*leading, in_features, dtype=dtype)
    w = leaf(out_features, in_features, dtype=dtype)
    b = leaf(out_features, dtype=dtype) if bias else None
    check_function(linear, F.linear, x, w, b).assert_ok()


@given(shape=st.lists(st.integers(0, 4), max_size=4), reduction=st.sampled_from(REDUCTIONS))
def test_sigmoid_then_mse_loss_match_native_for_any_shape(shape, reduction):
    ours = lambda x, y: mse_loss(sigmoid(x), y, reduction=reduction)  # noqa: E731
    native = lambda x, y: F.mse_loss(torch.sigmoid(x), y, reduction=reduction)  # noqa: E731
    check_function(ours, native, leaf(*shape), leaf(*shape)).assert_ok()


NON_CONTIGUOUS_LINEAR_OPERANDS = {
    "transposed input": lambda: (leaf(4, 5).detach().T.requires_grad_(), leaf(3, 4)),
    "strided input": lambda: (leaf(5, 8).detach()[:, ::2].requires_grad_(), leaf(3, 4)),
    "transposed weight": lambda: (leaf(5, 4), leaf(4, 3).detach().T.requires_grad_()),
}


@pytest.mark.parametrize("case", NON_CONTIGUOUS_LINEAR_OPERANDS)
def test_linear_matches_native_on_non_contiguous_operands(case):
    x, w = NON_CONTIGUOUS_LINEAR_OPERANDS[case]()
    assert not (x.is_contiguous() and w.is_contiguous())
    check_function(linear, F.linear, x, w, leaf(3)).assert_ok()


UPSTREAM_GRADIENTS = {
    "transposed": lambda: torch.randn(3, 5, dtype=torch.float64).T,
    "strided": lambda: torch.randn(5, 6, dtype=torch.float64)[:, ::2],
    "expanded": lambda: torch.randn(1, 3, dtype=torch.float64).expand(5, 3),
}


@pytest.mark.parametrize("layout", UPSTREAM_GRADIENTS)
@pytest.mark.parametrize(
    "ours, native",
    [(lambda x, w: linear(x, w), F.linear), (lambda x, w: sigmoid(x @ w.T), lambda x, w: torch.sigmoid(x @ w.T))],
    ids=["linear", "sigmoid"],
)
def test_non_contiguous_upstream_gradient(ours, native, layout):
    grad_output = UPSTREAM_GRADIENTS[layout]()
    assert not grad_output.is_contiguous()
    check_function(ours, native, leaf(5, 4), leaf(3, 4), grad_output=grad_output).assert_ok()


GRADCHECK_CASES = {
    "linear": (linear, lambda: (leaf(5, 4), leaf(3, 4), leaf(3))),
    "linear, no bias, 3-D": (linear, lambda: (leaf(2, 5, 4), leaf(3, 4), None)),
    "linear, 1-D input": (linear, lambda: (leaf(4), leaf(3, 4), leaf(3))),
    "sigmoid": (sigmoid, lambda: (leaf(3, 4),)),
    "mse_loss mean": (lambda x, y: mse_loss(x, y), lambda: (leaf(3, 4), leaf(3, 4))),
    "mse_loss sum": (lambda x, y: mse_loss(x, y, reduction="sum"), lambda: (leaf(3, 4), leaf(3, 4))),
    "mse_loss none": (lambda x, y: mse_loss(x, y, reduction="none"), lambda: (leaf(3, 4), leaf(3, 4))),
    "2-3-1 network, ½ SSE": (
        lambda x, w1, w2, y: 0.5 * mse_loss(sigmoid(linear(sigmoid(linear(x, w1)), w2)), y, reduction="sum"),
        lambda: (leaf(5, 2), leaf(3, 2), leaf(1, 3), leaf(5, 1)),
    ),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    fn, make_inputs = GRADCHECK_CASES[case]
    assert torch.autograd.gradcheck(fn, make_inputs())


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradgradcheck(case):
    fn, make_inputs = GRADCHECK_CASES[case]
    assert torch.autograd.gradgradcheck(fn, make_inputs())


def test_gradcheck_fails_on_a_wrong_backward():
    # gradcheck itself is only evidence if it can fail: plant a missing σ' factor.
    class NoDerivative(torchbp.functions.SigmoidFunction):
        @staticmethod
        def backward(ctx, grad_output):
            return grad_output

    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(NoDerivative.apply, (leaf(3, 4),))


def test_hessian_vector_product_matches_native():
    x, w1, w2, y = leaf(5, 2), leaf(3, 2), leaf(1, 3), leaf(5, 1)
    v = torch.randn(3, 2, dtype=torch.float64)

    def hvp(lin, sig, mse):
        w = w1.detach().requires_grad_()
        loss = mse(sig(lin(sig(lin(x, w)), w2)), y)
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        (hv,) = torch.autograd.grad(g, w, v)
        return hv

    torch.testing.assert_close(hvp(linear, sigmoid, mse_loss), hvp(F.linear, torch.sigmoid, F.mse_loss))


def two_three_one(lin, sig):
    return lambda params, x: sig(lin(sig(lin(x, params["w1"], params["b1"])), params["w2"], params["b2"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_vmap_of_grad_gives_the_per_sample_loop(dtype):
    torch.manual_seed(0)
    params = {"w1": torch.randn(3, 2), "b1": torch.randn(3), "w2": torch.randn(1, 3), "b2": torch.randn(1)}
    params = {k: v.to(dtype) for k, v in params.items()}
    x, y = torch.randn(5, 2, dtype=dtype), torch.rand(5, 1, dtype=dtype)
    net = two_three_one(linear, sigmoid)

    def loss(params, x_n, y_n):
        return mse_loss(net(params, x_n), y_n, reduction="sum")

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    native_net = two_three_one(F.linear, torch.sigmoid)
    for n in range(5):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        F.mse_loss(native_net(leaves, x[n]), y[n], reduction="sum").backward()
        for name, p in leaves.items():
            torch.testing.assert_close(per_sample[name][n], p.grad)


def test_jacrev_and_hessian_match_native():
    w = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64)
    ours = lambda x: mse_loss(sigmoid(linear(x, w)), torch.zeros(3, dtype=torch.float64))  # noqa: E731
    native = lambda x: F.mse_loss(torch.sigmoid(F.linear(x, w)), torch.zeros(3, dtype=torch.float64))  # noqa: E731
    torch.testing.assert_close(torch.func.jacrev(ours)(x), torch.func.jacrev(native)(x))
    hessian = torch.func.jacrev(torch.func.jacrev(ours))
    torch.testing.assert_close(hessian(x), torch.func.hessian(native)(x))


IN_PLACE_CHANGES = {
    "linear weight": lambda x, w: (linear(x, w), w),
    "linear input": lambda x, w: (linear(x, w), x),
    "sigmoid output": lambda x, w: (lambda out: (out, out))(sigmoid(x @ w.T)),
    "mse_loss input": lambda x, w: (lambda h: (mse_loss(h, torch.zeros_like(h)), h))(x @ w.T),
}


@pytest.mark.parametrize("case", IN_PLACE_CHANGES)
def test_in_place_change_to_a_saved_tensor_raises(case):
    x, w = leaf(5, 4), leaf(3, 4)
    out, saved = IN_PLACE_CHANGES[case](x, w)
    with torch.no_grad():
        saved.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "wanted, matrix_products, sums",
    [
        ({"x", "w", "b"}, 2, 1),
        ({"w", "b"}, 1, 1),  # no δ W for an input nobody differentiates
        ({"x"}, 1, 0),  # a frozen layer: neither δᵀ a_prev nor Σ δ
        ({"b"}, 0, 1),
    ],
    ids=str,
)
def test_linear_backward_does_only_the_work_asked_for(wanted, matrix_products, sums):
    shapes = {"x": (5, 4), "w": (3, 4), "b": (3,)}
    x, w, b = (torch.randn(shapes[name]).requires_grad_(name in wanted) for name in "xwb")
    out = linear(x, w, b)
    with CountOps() as counter:
        out.backward(torch.ones_like(out))
    assert counter.ops.count("mm") == matrix_products
    assert counter.ops.count("sum") == sums


def test_linear_saves_only_what_its_backward_reads():
    x, w = torch.randn(5, 4), torch.randn(3, 4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        linear(x, w)
    assert len(saved) == 1 and saved[0] is x  # δᵀ a_prev needs a_prev only; W is not kept


def test_sigmoid_saves_its_output_not_its_input():
    z = torch.randn(4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        a = sigmoid(z)
    assert len(saved) == 1 and torch.equal(saved[0], a) and not torch.equal(saved[0], z)


def test_apply_accepts_keyword_arguments_as_torch_does():
    x, w = leaf(5, 4), leaf(3, 4)
    torch.testing.assert_close(torchbp.functions.LinearFunction.apply(x, w, bias=None), F.linear(x, w))
