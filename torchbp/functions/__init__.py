"""The hand-derived autograd Functions: one file per layer, each holding its formula."""

from torchbp.functions.linear import LinearFunction
from torchbp.functions.mse_loss import MSELossFunction
from torchbp.functions.relu import ReLUFunction
from torchbp.functions.sequential import SequentialFunction
from torchbp.functions.sigmoid import SigmoidFunction
from torchbp.functions.tanh import TanhFunction
from torchbp.functions.validation import DeviceError, DTypeError, ShapeError

__all__ = [
    "LinearFunction",
    "SigmoidFunction",
    "TanhFunction",
    "ReLUFunction",
    "MSELossFunction",
    "SequentialFunction",
    "ShapeError",
    "DTypeError",
    "DeviceError",
]
