"""Every layer against PyTorch's own test inputs: the OpInfo samples of its functional form and the ModuleInfo
samples of its module (torch.testing._internal), float64, forward and backward, torchbp beside native.

A sample either matches native (outputs and every input's and parameter's gradient, to rounding) or is
refused with NotImplementedError for a reason listed in REFUSED (and in docs/layers.md); anything else
fails. Ops that draw random numbers are called through OpInfo's own seeding wrapper on both sides.
"""

import re

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db, wrapper_set_seed
from torch.testing._internal.common_modules import module_db
from torch.utils._pytree import tree_flatten, tree_map

import torchbp
import torchbp.functional as TF
import torchbp.layers.gelu
from torchbp.layers import HAND_DERIVED

# What native itself warns about on some of its own samples (a fast path not taken, a padded copy).
pytestmark = [
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
]

# OpInfo (name, variant): torchbp's form of what OpInfo's ``op`` calls, argument order included.
OPS = {
    ("nn.functional.linear", ""): TF.linear,
    ("nn.functional.conv2d", ""): TF.conv2d,
    ("nn.functional.max_pool2d", ""): TF.max_pool2d,
    ("nn.functional.avg_pool2d", ""): TF.avg_pool2d,
    ("nn.functional.adaptive_avg_pool2d", ""): TF.adaptive_avg_pool2d,
    ("nn.functional.layer_norm", ""): TF.layer_norm,
    ("nn.functional.group_norm", ""): TF.group_norm,
    ("nn.functional.batch_norm", ""): TF.batch_norm,
    ("nn.functional.cross_entropy", ""): TF.cross_entropy,
    ("nn.functional.mse_loss", ""): TF.mse_loss,
    ("sigmoid", ""): TF.sigmoid,
    ("tanh", ""): TF.tanh,
    ("nn.functional.relu", ""): TF.relu,
    ("nn.functional.gelu", ""): TF.gelu,
    ("softmax", ""): TF.softmax,
    ("softmax", "with_dtype"): TF.softmax,
    ("log_softmax", ""): TF.log_softmax,
    ("log_softmax", "with_dtype"): TF.log_softmax,
    ("nn.functional.embedding", ""): lambda weight, idx, **kwargs: TF.embedding(idx, weight, **kwargs),
    ("nn.functional.dropout", ""): lambda *args, **kwargs: wrapper_set_seed(TF.dropout, *args, **kwargs),
    ("nn.functional.scaled_dot_product_attention", ""): (
        lambda *args, **kwargs: wrapper_set_seed(TF.scaled_dot_product_attention, *args, **kwargs)
    ),
    ("nn.functional.multi_head_attention_forward", ""): (
        lambda *args, **kwargs: wrapper_set_seed(TF.multi_head_attention_forward, *args, **kwargs)
    ),
}
MODULES = [
    "Linear", "Conv2d", "LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "CrossEntropyLoss", "MSELoss",
    "Sigmoid", "Tanh", "ReLU", "GELU", "Softmax", "LogSoftmax", "Embedding", "MultiheadAttention",
    "TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer", "MaxPool2d", "AvgPool2d",
    "AdaptiveAvgPool2d",
]  # fmt: skip

# What torchbp refuses, each with its reason (NotImplementedError's message for a functional form; for a
# module, the native class convert leaves as it is). docs/layers.md lists the same.
REFUSED = {
    "nn.functional.embedding": r"max_norm renormalises|sparse=True gives a sparse gradient",
    "Embedding": "Embedding",  # with max_norm or sparse=True: left native by convert
}


def tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def fresh(tree):
    return tree_map(
        lambda t: t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t, tree
    )


def forward_and_backward(call, args, kwargs, parameters=()):
    """Outputs, and the gradients of every input and parameter that requires grad for a fixed random upstream
    gradient; the random state seeded alike for each side."""
    args, kwargs = fresh(args), fresh(kwargs)
    torch.manual_seed(1)
    outputs = tensors(call(*args, **kwargs))
    differentiable = [o for o in outputs if o.requires_grad]
    leaves = [t for t in tensors((args, kwargs)) if t.requires_grad] + list(parameters)
    grads = []
    if differentiable and leaves:
        generator = torch.Generator().manual_seed(2)
        upstream = [torch.randn(o.shape, dtype=o.dtype, generator=generator) for o in differentiable]
        grads = torch.autograd.grad(differentiable, leaves, upstream, allow_unused=True)
    return outputs, grads


def assert_same(native, hand):
    (native_outputs, native_grads), (hand_outputs, hand_grads) = native, hand
    assert len(native_outputs) == len(hand_outputs) and len(native_grads) == len(hand_grads)
    for expected, actual in zip(native_outputs, hand_outputs):
        torch.testing.assert_close(actual, expected, equal_nan=True)
    for expected, actual in zip(native_grads, hand_grads):
        if expected is None or actual is None:  # no gradient on one side: none, or zeros, on the other
            assert all(g is None or not g.any() for g in (expected, actual))
        else:
            torch.testing.assert_close(actual, expected, equal_nan=True)


def op_samples(op):
    for requires_grad in (True, False):
        yield from op.sample_inputs("cpu", torch.float64, requires_grad=requires_grad)


def check_op(op) -> list[str]:
    """Every sample of the OpInfo through torchbp beside native; the refusals' messages."""
    refusals = []
    for sample in op_samples(op):
        args, kwargs = (sample.input, *sample.args), sample.kwargs
        native = forward_and_backward(op.op, args, kwargs)
        try:
            hand = forward_and_backward(OPS[(op.name, op.variant_test_name)], args, kwargs)
        except NotImplementedError as refusal:
            refusals.append(str(refusal))
            continue
        assert_same(native, hand)
    return refusals


@pytest.mark.parametrize("op", [op for op in op_db if (op.name, op.variant_test_name) in OPS], ids=str)
def test_the_functional_form_matches_native_on_pytorchs_samples(op):
    refusals = check_op(op)
    reason = REFUSED.get(op.name)
    assert all(reason and re.search(reason, message) for message in refusals), refusals


def module_samples(info):
    for training in (True, False):
        for sample in info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                              training=training):  # fmt: skip
            if sample.forward_input is not None:
                yield training, sample


@pytest.mark.parametrize("info", [info for info in module_db if info.module_cls.__name__ in MODULES], ids=str)
def test_the_converted_module_matches_native_on_pytorchs_samples(info):
    left_native = set()
    for training, sample in module_samples(info):
        torch.manual_seed(0)
        native = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
        native = native.to(torch.float64).train(training)
        hand = torchbp.convert(native)
        left_native |= {type(m).__name__ for m in hand.modules() if type(m) in HAND_DERIVED}
        forward = sample.forward_input
        assert_same(
            forward_and_backward(native, forward.args, forward.kwargs, native.parameters()),
            forward_and_backward(hand, forward.args, forward.kwargs, hand.parameters()),
        )
        for (name, theirs), mine in zip(native.named_buffers(), hand.buffers()):  # running statistics, counts
            assert torch.equal(mine, theirs), f"buffer {name}: {mine} where native's is {theirs}"
    reason = REFUSED.get(info.module_cls.__name__)
    assert all(reason and re.fullmatch(reason, name) for name in left_native), left_native


def test_a_planted_wrong_derivative_fails_the_conformance(monkeypatch):
    right = torchbp.layers.gelu.GELUFunction.derivative
    monkeypatch.setattr(torchbp.layers.gelu.GELUFunction, "derivative", staticmethod(lambda z: right(z) * 1.001))
    (gelu,) = [op for op in op_db if op.name == "nn.functional.gelu"]
    with pytest.raises(AssertionError, match="not close"):
        check_op(gelu)
