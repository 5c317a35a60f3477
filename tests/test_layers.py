"""The table of layers (torchbp.nn.LAYERS): every entry is a drop-in, and every tool picks it up from there.

Cases are data: each native module below is converted, checked, trained in lockstep and, where it has
parameters, asked for per-sample gradients, against native autograd and a loop over samples.
"""

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchbp
from torchbp import table
from torchbp.layers import HAND_DERIVED, LAYERS, OPERATIONS
from torchbp.per_sample import PER_SAMPLE_RULES

from conftest import per_sample_by_torch_func


def double(module):
    return module.double()


# name: (a model holding the layer, a loss, inputs, target); float64, seeded.
def images(n=4, c=2, size=6):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, c, size, size, generator=generator, dtype=torch.float64)


def sequences(n=5, t=3, f=6):
    generator = torch.Generator().manual_seed(2)
    return torch.randn(n, t, f, generator=generator, dtype=torch.float64)


def vectors(n=5, f=6):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, f, generator=generator, dtype=torch.float64)


class Attending(torch.nn.Module):
    """Self-attention with a causal mask, then a linear layer: MultiheadAttention returns a pair."""

    def __init__(self, batch_first=True, **kwargs):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(6, 2, batch_first=batch_first, **kwargs)
        self.head = torch.nn.Linear(6, 2)
        self.batch_first, self.kdim = batch_first, kwargs.get("kdim", 6)

    def forward(self, x):
        sequence = x if self.batch_first else x.transpose(0, 1)
        other = sequence[..., : self.kdim] if self.kdim != 6 else sequence  # key and value: one tensor or a slice
        mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
        output = self.attention(sequence, other, other, attn_mask=mask, need_weights=False)[0]
        return self.head(output if self.batch_first else output.transpose(0, 1))


def model_cases():
    torch.manual_seed(0)

    def conv(**kw):
        return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, **kw), torch.nn.ReLU(), torch.nn.Flatten()).double()

    mse = torch.nn.MSELoss(reduction="sum")
    cases = {
        "Linear": (torch.nn.Sequential(torch.nn.Linear(6, 3)).double(), mse, vectors(), None),
        "Tanh": (torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh()).double(), mse, vectors(), None),
        "ReLU": (torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU()).double(), mse, vectors(), None),
        "GELU": (torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.GELU()).double(), mse, vectors(), None),
        "GELU, tanh": (
            torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.GELU(approximate="tanh")).double(),
            mse,
            vectors(),
            None,
        ),
        "LayerNorm": (torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4)).double(), mse, vectors(), None),
        "Embedding, padding_idx": (
            torch.nn.Sequential(torch.nn.Embedding(7, 3, padding_idx=0), torch.nn.Linear(3, 2)).double(),
            mse,
            torch.randint(0, 7, (5, 4), generator=torch.Generator().manual_seed(1)),
            None,
        ),
        "Dropout, in eval mode": (
            torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Dropout(0.5)).double().eval(),
            mse,
            vectors(),
            None,
        ),
        "Softmax": (torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Softmax(1)).double(), mse, vectors(), None),
        "LogSoftmax": (
            torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LogSoftmax(-1)).double(),
            mse,
            vectors(),
            None,
        ),
        "LayerNorm over two dimensions, no bias": (
            torch.nn.Sequential(torch.nn.Unflatten(1, (2, 3)), torch.nn.LayerNorm((2, 3), bias=False)).double(),
            mse,
            vectors(),
            None,
        ),
        "CrossEntropyLoss": (
            torch.nn.Sequential(torch.nn.Linear(6, 4)).double(),
            torch.nn.CrossEntropyLoss(reduction="sum"),
            vectors(),
            torch.tensor([0, 3, 1, 1, 2]),
        ),
        "MultiheadAttention": (Attending().double(), mse, sequences(), None),
        "MultiheadAttention, sequence first, separate weights": (
            Attending(batch_first=False, kdim=4, vdim=4, bias=False).double(),
            mse,
            sequences(),
            None,
        ),
        "Conv2d, padding 1": (conv(padding=1), mse, images(), None),
        "Conv2d, same": (conv(padding="same"), mse, images(), None),
        "Conv2d, stride 2, dilation 2": (conv(stride=2, dilation=2, padding=2), mse, images(), None),
        "Conv2d, reflect padding": (conv(padding=1, padding_mode="reflect"), mse, images(), None),
        "Conv2d, no bias": (conv(bias=False), mse, images(), None),
        "GroupNorm": (
            torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Flatten()).double(),
            mse,
            images(),
            None,
        ),
        "GroupNorm of (N, C), no affine": (
            torch.nn.Sequential(
                torch.nn.Linear(6, 6), torch.nn.GroupNorm(2, 6, affine=False), torch.nn.Linear(6, 2)
            ).double(),
            mse,
            vectors(),
            None,
        ),
    }
    return {
        name: (model, loss, x, target if target is not None else torch.randn_like(model(x)))
        for name, (model, loss, x, target) in cases.items()
    }


CASES = model_cases()


def test_the_table_is_the_one_list_convert_and_per_sample_read():
    assert {layer.native for layer in LAYERS} == set(HAND_DERIVED)
    assert {layer.hand for layer in LAYERS if layer.per_sample} == set(PER_SAMPLE_RULES)
    for layer in LAYERS:
        assert issubclass(layer.hand, layer.native) and getattr(torchbp.nn, layer.hand.__name__) is layer.hand
        assert layer.native.__name__ == layer.hand.__name__


@pytest.mark.parametrize("name", CASES)
def test_check_model_finds_the_layer_hand_derived_and_matching(name):
    model, loss_fn, x, target = CASES[name]
    report = torchbp.check_model(model, loss_fn, x, target)
    report.assert_ok()
    assert "native: none" in report.layers or "Flatten" in report.layers or "Unflatten" in report.layers, report.layers


@pytest.mark.parametrize("name", CASES)
def test_convert_and_to_native_keep_the_state_dict(name):
    model = CASES[name][0]
    converted = torchbp.convert(model)
    assert all(type(m) in {layer.hand for layer in LAYERS} or type(m) not in HAND_DERIVED for m in converted.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value)
    assert [type(m) for m in torchbp.to_native(converted).modules()] == [type(m) for m in model.modules()]


@pytest.mark.parametrize("name", CASES)
def test_per_sample_gradients_are_a_loop_over_samples(name):
    model, loss_fn, x, target = CASES[name]
    grads = torchbp.per_sample_grads(model, loss_fn, x, target)
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for n in range(len(x)):
        model.zero_grad()
        loss_fn(model(x[n : n + 1]), target[n : n + 1]).backward()
        for key, p in model.named_parameters():
            torch.testing.assert_close(grads[key][n], p.grad, rtol=1e-10, atol=1e-12)
    norms = torchbp.per_sample_grad_norms(model, loss_fn, x, target)
    torch.testing.assert_close(norms, torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values())))


# vmap over native attention warns that it loops over the samples; the reference is still right.
@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("name", ["Conv2d, padding 1", "LayerNorm", "GroupNorm", "MultiheadAttention"])
def test_per_sample_gradients_are_torch_funcs(name):
    model, loss_fn, x, target = CASES[name]
    expected = per_sample_by_torch_func(model, loss_fn, x, target)
    grads = torchbp.per_sample_grads(model, loss_fn, x, target)
    for key in expected:
        torch.testing.assert_close(grads[key], expected[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["Conv2d, padding 1", "LayerNorm", "GroupNorm", "CrossEntropyLoss"])
def test_the_lockstep_trainer_trains_it_beside_native(name, tmp_path):
    model, loss_fn, x, target = CASES[name]
    trainer = torchbp.LockstepTrainer(model, loss_fn, lr=0.01, log_dir=tmp_path, per_sample_every=2)
    with trainer:
        result = trainer.train([(x, target)] * 4)
    assert result.mismatch_step is None and result.steps == 4


def test_a_planted_wrong_per_sample_formula_is_caught(monkeypatch):
    monkeypatch.setattr(torchbp.layers.conv2d, "per_sample_bias_grads", lambda delta, out=None: delta.sum((2, 3)) * 2)
    with pytest.raises(AssertionError):
        test_per_sample_gradients_are_a_loop_over_samples("Conv2d, padding 1")


def test_a_planted_wrong_attention_replay_is_caught(monkeypatch):
    replay = torchbp.layers.multihead_attention.MultiheadAttentionPerSample.products

    def swapped(self, module, call, delta):  # the query's and the key's δ swapped
        products = replay(self, module, call, delta)
        return {**products, "q": (products["k"][0], products["q"][1]), "k": (products["q"][0], products["k"][1])}

    monkeypatch.setattr(torchbp.layers.multihead_attention.MultiheadAttentionPerSample, "products", swapped)
    with pytest.raises(AssertionError):
        test_per_sample_gradients_are_a_loop_over_samples("MultiheadAttention")


REFUSED = [
    (
        "conv2d with groups that do not divide the channels",
        lambda: torchbp.functional.conv2d(torch.randn(1, 6, 5, 5), torch.randn(4, 2, 3, 3), groups=3),
        torchbp.ShapeError,
        "groups=3 to divide the weight's 4 output channels",
    ),
    (
        "CrossEntropyLoss with a class weight vector of the wrong length",
        lambda: torchbp.nn.CrossEntropyLoss(weight=torch.ones(4))(torch.randn(2, 3), torch.tensor([0, 1])),
        torchbp.ShapeError,
        r"weight of shape \(3,\), one per class of input \(2, 3\), got \(4,\)",
    ),
    (
        "a class index out of range",
        lambda: torchbp.nn.CrossEntropyLoss()(torch.randn(2, 3), torch.tensor([0, 3])),
        torchbp.ClassIndexError,
        "3",
    ),
    (
        "a conv2d weight of the wrong shape",
        lambda: torchbp.functional.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3)),
        torchbp.ShapeError,
        "weight",
    ),
    (
        "a layer_norm input of the wrong shape",
        lambda: torchbp.functional.layer_norm(torch.randn(2, 5), (4,)),
        torchbp.ShapeError,
        r"\(2, 5\)",
    ),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_what_the_new_layers_refuse(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_layer_norm_takes_a_low_precision_input_with_float32_parameters_as_natively():
    """A Linear's bfloat16 output under autocast, into a LayerNorm whose parameters are float32."""
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = native(x), torchbp.convert(native)(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torchbp.check_model(native, torch.nn.MSELoss(), x, torch.randn(4, 8), rtol=2e-2).assert_ok()


def test_convert_leaves_an_instance_torchbp_cannot_run_native():
    native = torch.nn.Embedding(5, 3, max_norm=1.0)  # renormalises its weight in place in the forward
    assert type(torchbp.convert(native)) is torch.nn.Embedding
    model = torch.nn.Sequential(native, torch.nn.Flatten(), torch.nn.Linear(6, 2)).double()
    indices = torch.tensor([[0, 1], [2, 4]])
    report = torchbp.check_model(model, torch.nn.MSELoss(), indices, torch.randn(2, 2, dtype=torch.float64))
    assert report.ok and report.layers == "hand-derived: 2 Linear, loss MSELoss; native: 0 Embedding, 1 Flatten"


def test_grouped_convolution_and_class_weights_convert_and_match_native():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, groups=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Flatten()
    )
    assert all(type(m).__module__.startswith("torchbp") for m in torchbp.convert(model)[::2])
    loss = torch.nn.CrossEntropyLoss(weight=torch.rand(8, dtype=torch.float64) + 0.5)
    x, target = torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.tensor([0, 7, 3])
    report = torchbp.check_model(model.double(), loss, x, target)
    assert (
        report.ok
        and report.layers == "hand-derived: 0 Conv2d, 1 ReLU, 2 Conv2d, loss CrossEntropyLoss; native: 3 Flatten"
    )


# -- one home per layer ------------------------------------------------------------------------

LAYER_FILES = {  # every layer of the table, and the one file that defines it
    "AdaptiveAvgPool2d": "torchbp/layers/adaptive_avg_pool2d.py",
    "AvgPool2d": "torchbp/layers/avg_pool2d.py",
    "BatchNorm1d": "torchbp/layers/batch_norm.py",  # one family, one formula: one file registers both
    "BatchNorm2d": "torchbp/layers/batch_norm.py",
    "Conv2d": "torchbp/layers/conv2d.py",
    "CrossEntropyLoss": "torchbp/layers/cross_entropy.py",
    "Dropout": "torchbp/layers/dropout.py",
    "Embedding": "torchbp/layers/embedding.py",
    "GELU": "torchbp/layers/gelu.py",
    "GroupNorm": "torchbp/layers/group_norm.py",
    "LayerNorm": "torchbp/layers/layer_norm.py",
    "Linear": "torchbp/layers/linear.py",
    "LogSoftmax": "torchbp/layers/log_softmax.py",
    "MaxPool2d": "torchbp/layers/max_pool2d.py",
    "MSELoss": "torchbp/layers/mse_loss.py",
    "MultiheadAttention": "torchbp/layers/multihead_attention.py",
    "ReLU": "torchbp/layers/relu.py",
    "Sigmoid": "torchbp/layers/sigmoid.py",
    "Softmax": "torchbp/layers/softmax.py",
    "Tanh": "torchbp/layers/tanh.py",
}
ROOT = Path(__file__).resolve().parent.parent


def module_file(obj) -> str:
    return obj.__module__.replace(".", "/") + ".py"


def top_level_definitions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}


def calls_to(name: str, path: Path) -> int:
    return sum(
        isinstance(node, ast.Call) and getattr(node.func, "id", None) == name
        for node in ast.walk(ast.parse(path.read_text()))
    )


OPERATION_FILES = {  # every operation without a module of its own, and its one file
    "ScaledDotProductAttentionFunction": "torchbp/layers/attention.py",
}
COMPOSITE = {"MultiheadAttention"}  # layers built of other layers and operations, which hold their Functions


def test_the_table_lists_every_layer_and_operation_and_its_one_file():
    assert {layer.hand.__name__: module_file(layer.hand) for layer in LAYERS} == LAYER_FILES
    assert {op.function.__name__: module_file(op.function) for op in OPERATIONS} == OPERATION_FILES
    assert sorted(
        f"torchbp/layers/{p.name}" for p in (ROOT / "torchbp" / "layers").glob("*.py") if p.name != "__init__.py"
    ) == sorted({*LAYER_FILES.values(), *OPERATION_FILES.values()})


REGISTRATIONS_REFUSED = {
    "a native class registered twice": (lambda mse: mse, "MSELoss is registered twice"),
    "a step whose constant comes before its tensor": (
        lambda mse: mse._replace(native=torch.nn.L1Loss, step=mse.step._replace(constants=(0,))),
        r"L1Loss's step: expected its constants last, got them at \(0,\)",
    ),
}


@pytest.mark.parametrize("case", REGISTRATIONS_REFUSED)
def test_the_table_refuses(case, monkeypatch):
    make, message = REGISTRATIONS_REFUSED[case]
    monkeypatch.setattr(table, "REGISTERED", list(LAYERS))
    mse = next(layer for layer in LAYERS if layer.native is torch.nn.MSELoss)
    with pytest.raises(ValueError, match=message):
        table.register(make(mse))


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.hand.__name__)
def test_a_layers_file_alone_holds_its_function_checks_functional_form_module_and_registration(layer):
    home = ROOT / LAYER_FILES[layer.hand.__name__]
    # A layer built of others names the Function of the operation it runs, which lives in that operation's file.
    composite = layer.hand.__name__ in COMPOSITE
    function_home = ROOT / (OPERATION_FILES[layer.function.__name__] if composite else LAYER_FILES[layer.hand.__name__])
    names = {layer.functional.__name__, layer.hand.__name__} | ({layer.function.__name__} if not composite else set())
    assert module_file(layer.function) == str(function_home.relative_to(ROOT))
    for piece in (layer.functional, layer.hand):
        assert module_file(piece) == LAYER_FILES[layer.hand.__name__]
    if layer.per_sample is not None:
        assert module_file(type(layer.per_sample)) == LAYER_FILES[layer.hand.__name__]
    if layer.step is not None:
        assert module_file(layer.step.forward) == LAYER_FILES[layer.hand.__name__]
    family = [entry for entry in LAYERS if LAYER_FILES[entry.hand.__name__] == LAYER_FILES[layer.hand.__name__]]
    assert calls_to("register", home) == len(family)  # once per layer (BatchNorm1d and 2d share one file)
    # Its checks: every validate_* its forward calls is defined in its file or shared in torchbp/validation.py.
    forward = ast.parse(textwrap.dedent(inspect.getsource(layer.function.forward)))
    called = {
        node.func.id
        for node in ast.walk(forward)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "").startswith("validate_")
    }
    assert called, f"{layer.function.__name__}.forward validates nothing"
    shared = top_level_definitions(ROOT / "torchbp" / "validation.py")
    assert called <= top_level_definitions(function_home) | shared
    # No other file of the library defines these names, and none outside torchbp/layers registers a layer.
    for path in (ROOT / "torchbp").rglob("*.py"):
        if path != home:
            assert not names & top_level_definitions(path), path
        if path.parent.name != "layers":
            assert calls_to("register", path) == 0, path


NEW_LAYER_CHECK = """
import torch, torchbp
import torch.nn.functional as F
assert torchbp.nn.Softsign is torchbp.layers.softsign.Softsign
assert torchbp.functional.softsign is torchbp.layers.softsign.softsign
assert torchbp.functions.SoftsignFunction is torchbp.layers.softsign.SoftsignFunction
torch.manual_seed(0)
native = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Softsign(), torch.nn.Linear(4, 2)).double()
x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
assert type(torchbp.convert(native)[1]) is torchbp.nn.Softsign
report = torchbp.check_model(native, torch.nn.MSELoss(), x, y)
report.assert_ok()
assert "1 Softsign" in report.layers.split(";")[0], report.layers
fused = torchbp.fuse(native)
assert type(fused(x.requires_grad_()).grad_fn).__name__.startswith("SequentialFunction")
torchbp.check_model(fused, torch.nn.MSELoss(), x, y).assert_ok()
torchbp.verify(torchbp.functional.softsign, F.softsign, torch.randn(6, 4), compile_backend="aot_eager").assert_ok()
print("a new layer in one file")
"""


def contributing_example() -> str:
    """The layer file docs/contributing.md shows."""
    page = (ROOT / "docs" / "contributing.md").read_text()
    return next(
        block
        for block in re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
        if "register(Layer(torch.nn.Softsign" in block
    )


def test_a_new_layer_is_one_file(tmp_path):
    """The contributor page's Softsign, added as one file to a copy of the package, is everywhere a layer is."""
    shutil.copytree(ROOT / "torchbp", tmp_path / "torchbp", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "torchbp" / "layers" / "softsign.py").write_text(contributing_example())
    result = subprocess.run(
        [sys.executable, "-c", NEW_LAYER_CHECK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "a new layer in one file" in result.stdout
