"""The blocks of the CNNs people train, written as torchvision writes them (no torchvision needed): a ResNet-18
stem and basic block, a MobileNetV2 inverted residual block. torchbp.convert leaves no layer with parameters
native, and the converted model matches native in training mode (batch statistics, running statistics updated)
and in eval mode (running statistics)."""

import pytest
import torch
from torch import nn

import torchbp


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: two 3×3 convolutions with batch norm, the input added back
    (through a 1×1 convolution and batch norm where the shape changes), ReLU in place."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def resnet18_like(classes: int = 5) -> nn.Module:
    """ResNet-18's stem (7×7 stride-2 convolution, batch norm, ReLU, 3×3 stride-2 max pooling), two basic blocks
    (the second halving the size, with a downsampling shortcut), global average pooling and the classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        BasicBlock(8, 8),
        BasicBlock(8, 16, stride=2),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


class InvertedResidual(nn.Module):
    """torchvision.models.mobilenetv2.InvertedResidual: a 1×1 expansion, a 3×3 depthwise convolution
    (groups = channels), a 1×1 linear projection, each with batch norm, ReLU6 between; the input added back
    where stride and width allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_like(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(inplace=True),
        InvertedResidual(8, 8, stride=1, expand_ratio=4),
        InvertedResidual(8, 12, stride=2, expand_ratio=6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    )


MODELS = {"ResNet-18 stem and basic blocks": resnet18_like, "MobileNetV2 inverted residual blocks": mobilenet_like}


def parameterised_natives(model: nn.Module) -> list[str]:
    """The layers holding parameters of their own that are still torch.nn's."""
    return [
        f"{name} {type(module).__name__}"
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) and type(module).__module__.startswith("torch.nn")
    ]


@pytest.mark.parametrize("case", MODELS)
def test_convert_leaves_no_layer_with_parameters_native(case):
    torch.manual_seed(0)
    native = MODELS[case]()
    assert parameterised_natives(native)  # the check sees native layers where there are some
    assert parameterised_natives(torchbp.convert(native)) == []


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("case", MODELS)
def test_the_converted_block_matches_native(case, training):
    torch.manual_seed(0)
    native = MODELS[case]().double().train(training)
    if not training:  # running statistics that are not the initial 0 and 1
        with torch.no_grad():
            native.train()(torch.randn(8, 3, 32, 32, dtype=torch.float64))
            native.eval()
    x, target = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 1, 4])
    loss = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 5, dtype=torch.float64))
    # In training mode a block's last batch norm feeds, through the next block's 1×1 convolution, another batch
    # norm, which takes away any per-channel constant: that bias's gradient is exactly 0, and the two sides' are
    # two roundings of 0 (about 1e-17), which no relative tolerance equates. An absolute one far below every other
    # gradient (about 1e-2) does.
    report = torchbp.check_model(native, loss, x, target, atol=1e-12)
    assert report.ok, report
    assert "BatchNorm2d" in report.layers.split("; native:")[0]


def test_a_planted_wrong_batch_norm_gradient_fails_the_block(monkeypatch):
    real = torchbp.layers.batch_norm.batch_norm_backward

    def without_the_term_through_the_mean(g, *rest):
        grad_x, grad_weight, grad_bias = real(g, *rest)
        if grad_x is None:
            return grad_x, grad_weight, grad_bias
        return grad_x + g.mean((0, 2, 3), keepdim=True), grad_weight, grad_bias

    monkeypatch.setattr(torchbp.layers.batch_norm, "batch_norm_backward", without_the_term_through_the_mean)
    torch.manual_seed(0)
    native = resnet18_like().double()
    x, target = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 1, 4])
    assert not torchbp.check_model(native, nn.CrossEntropyLoss(), x, target).ok
