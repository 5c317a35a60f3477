"""Drop-in modules and the converter: the same classes, parameters and state as torch.nn."""

import copy
import warnings

import pytest
import torch

import torchbp

MODULE_PAIRS = {
    "Linear": (torch.nn.Linear, torchbp.nn.Linear, (4, 3), {}),
    "Linear without bias": (torch.nn.Linear, torchbp.nn.Linear, (4, 3), {"bias": False}),
    "Linear float64": (torch.nn.Linear, torchbp.nn.Linear, (4, 3), {"dtype": torch.float64, "device": "cpu"}),
    "Sigmoid": (torch.nn.Sigmoid, torchbp.nn.Sigmoid, (), {}),
    "MSELoss": (torch.nn.MSELoss, torchbp.nn.MSELoss, (), {"reduction": "sum"}),
    "MSELoss legacy arguments": (torch.nn.MSELoss, torchbp.nn.MSELoss, (), {"size_average": False}),
}


def build_pair(case, seed=0):
    native_cls, ours_cls, args, kwargs = MODULE_PAIRS[case]
    legacy = "size_average" in kwargs or "reduce" in kwargs
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        torch.manual_seed(seed)
        native = native_cls(*args, **kwargs)
        torch.manual_seed(seed)
        ours = ours_cls(*args, **kwargs)
    # Drop-in down to the warnings: legacy arguments draw torch's deprecation warning from both alike.
    assert [str(w.message) for w in warned] == ([str(warned[0].message)] * 2 if legacy else [])
    return native, ours


@pytest.mark.parametrize("case", MODULE_PAIRS)
def test_module_is_an_instance_of_its_native_class(case):
    native, ours = build_pair(case)
    assert isinstance(ours, type(native))


@pytest.mark.parametrize("case", MODULE_PAIRS)
def test_module_initialises_like_native_under_the_same_seed(case):
    native, ours = build_pair(case)
    assert native.state_dict().keys() == ours.state_dict().keys()
    for key, value in native.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value) and ours.state_dict()[key].dtype == value.dtype
    assert getattr(ours, "reduction", None) == getattr(native, "reduction", None)


@pytest.mark.parametrize("case", [c for c in MODULE_PAIRS if c.startswith("Linear")])
def test_state_dicts_swap_both_ways(case):
    native, ours = build_pair(case, seed=0)
    other_native, other_ours = build_pair(case, seed=1)
    ours.load_state_dict(other_native.state_dict())
    native.load_state_dict(other_ours.state_dict())
    for key, value in other_native.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
        assert torch.equal(native.state_dict()[key], value)


@pytest.mark.parametrize("case", MODULE_PAIRS)
def test_repr_names_the_torchbp_version_and_keeps_the_native_details(case):
    native, ours = build_pair(case)
    assert repr(ours) == "torchbp." + repr(native)


def test_linear_module_matches_native_output_and_gradients():
    native, ours = build_pair("Linear")
    x = torch.randn(2, 5, 4)
    report = torchbp.check_model(ours, torch.nn.MSELoss(), x, torch.randn(2, 5, 3))
    assert report.ok, str(report)
    torch.testing.assert_close(ours(x), native(x), rtol=0, atol=0)


class Block(torch.nn.Module):
    """A custom module holding layers in every kind of container."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Sigmoid()])
        self.heads = torch.nn.ModuleDict({"out": torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Sigmoid())})
        self.loss = torch.nn.MSELoss()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.heads["out"](x)


def nested_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), Block(), torch.nn.Identity())


NATIVE = {torch.nn.Linear, torch.nn.Sigmoid, torch.nn.MSELoss}
HAND = {torchbp.nn.Linear, torchbp.nn.Sigmoid, torchbp.nn.MSELoss}


def layer_types(model):
    return {type(m) for m in model.modules()} & (NATIVE | HAND)


def test_convert_replaces_every_layer_at_any_depth_and_keeps_parameters():
    model = nested_model()
    converted = torchbp.convert(model)
    assert layer_types(converted) == HAND
    assert layer_types(model) == NATIVE, "the original was changed"
    for (name, p), (name2, q) in zip(model.named_parameters(), converted.named_parameters()):
        assert name == name2 and torch.equal(p, q) and p is not q


def test_to_native_reverses_convert():
    converted = torchbp.convert(nested_model())
    native = torchbp.to_native(converted)
    assert layer_types(native) == NATIVE and layer_types(converted) == HAND
    assert all(torch.equal(p, q) for p, q in zip(native.parameters(), converted.parameters()))


def test_convert_in_place_keeps_the_same_parameter_objects():
    model = nested_model()
    parameters = list(model.parameters())
    assert torchbp.convert(model, inplace=True) is model
    assert layer_types(model) == HAND
    assert all(p is q for p, q in zip(parameters, model.parameters()))


def test_convert_a_single_layer():
    layer = torch.nn.Linear(2, 3)
    assert type(torchbp.convert(layer)) is torchbp.nn.Linear
    assert type(torchbp.to_native(torchbp.nn.Sigmoid())) is torch.nn.Sigmoid


def test_convert_leaves_subclasses_of_native_layers_alone():
    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert type(torchbp.convert(torch.nn.Sequential(Scaled(2, 2)))[0]) is Scaled


def test_convert_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        torchbp.convert(lambda x: x)


def test_converted_model_gives_native_gradients():
    model = nested_model()
    report = torchbp.check_model(model, torch.nn.MSELoss(), torch.randn(6, 3), torch.rand(6, 2))
    assert report.ok, str(report)
    assert len(report.rows) == 2 + 1 + len(list(model.parameters()))


def test_deepcopy_of_a_converted_model_keeps_torchbp_layers():
    assert layer_types(copy.deepcopy(torchbp.convert(nested_model()))) == HAND
