"""The hand-derived autograd Functions: one file per layer, each holding its formula."""

from torchbp.functions.conv2d import Conv2dFunction
from torchbp.functions.cross_entropy import CrossEntropyFunction
from torchbp.functions.layer_norm import LayerNormFunction
from torchbp.functions.linear import LinearFunction
from torchbp.functions.mse_loss import MSELossFunction
from torchbp.functions.relu import ReLUFunction
from torchbp.functions.sequential import SequentialFunction
from torchbp.functions.sigmoid import SigmoidFunction
from torchbp.functions.tanh import TanhFunction
from torchbp.functions.validation import ArgumentError, ClassIndexError, DeviceError, DTypeError, ShapeError

__all__ = [
    "LinearFunction",
    "SigmoidFunction",
    "TanhFunction",
    "ReLUFunction",
    "Conv2dFunction",
    "LayerNormFunction",
    "MSELossFunction",
    "CrossEntropyFunction",
    "SequentialFunction",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "ArgumentError",
    "ClassIndexError",
]
