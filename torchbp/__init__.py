"""torchbp: hand-derived backpropagation for PyTorch, checked against native autograd.

The chain, in the order data flows:

- ``torchbp.functions``: the autograd Functions, one file per layer, holding the math;
- ``torchbp.functional`` and ``torchbp.nn``: drop-in wrappers with torch's signatures;
- ``torchbp.convert`` / ``torchbp.to_native``: swap a model's layers either way; ``torchbp.fuse`` and
  ``torchbp.fuse_loss`` run a chain (and its loss) as one Function;
- ``torchbp.compare`` and ``torchbp.check``: compare tensors; check a function or model against native autograd;
- ``torchbp.verify`` (``torchbp.verification``): prove any hand-written autograd Function right, property by
  property (gradients, double backward, layouts, torch.func, torch.compile, autocast, memory, in-place writes);
- ``torchbp.per_sample``: per-sample gradients from the hand-derived backward;
- ``torchbp.lockstep``: train a torchbp model and its native twin side by side,
  checking them at every step and logging both to TensorBoard.
"""

from torchbp import functional, functions, nn
from torchbp.check import check_function, check_model
from torchbp.compare import ComparedTensor, Report, compare_tensors
from torchbp.convert import convert, fuse, fuse_loss, to_native
from torchbp.lockstep import LockstepMismatch, LockstepResult, LockstepTrainer, StepRecord
from torchbp.per_sample import PerSampleGradients, per_sample_grad_norms, per_sample_grads
from torchbp.tensorboard_log import new_run_dir
from torchbp.validation import ArgumentError, ClassIndexError, DeviceError, DTypeError, IndexRangeError, ShapeError
from torchbp.verification import VERIFY_PROPERTIES, VerifyReport, VerifyRow, verify

__version__ = "0.1.0"

__all__ = [
    "VERIFY_PROPERTIES",
    "ArgumentError",
    "ClassIndexError",
    "ComparedTensor",
    "DTypeError",
    "DeviceError",
    "IndexRangeError",
    "LockstepMismatch",
    "LockstepResult",
    "LockstepTrainer",
    "PerSampleGradients",
    "Report",
    "ShapeError",
    "StepRecord",
    "VerifyReport",
    "VerifyRow",
    "check_function",
    "check_model",
    "compare_tensors",
    "convert",
    "functional",
    "functions",
    "fuse",
    "fuse_loss",
    "new_run_dir",
    "nn",
    "per_sample_grad_norms",
    "per_sample_grads",
    "to_native",
    "verify",
]
