"""Autocast for the hand-derived layers.

Inside ``torch.autocast`` native torch casts the inputs of some operations
before running them: linear and conv2d to the autocast dtype (bfloat16 on CPU,
float16 on CUDA by default), mse_loss and cross_entropy to float32; the activations
and layer_norm run in their input's dtype. Autocast does not reach into a
custom autograd Function (``torch.amp.custom_fwd`` does not work with the
``setup_context`` form), so the functional wrappers insert the same casts
themselves, as ordinary differentiable ``Tensor.to`` calls: the hand-derived
backward then runs in the cast dtype, and the casts' own backward hands each
parameter a gradient of its own dtype, as under native autocast.

Like native autocast, only floating-point tensors on the autocast device are
cast, and float64 tensors never are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch.torch_version import TorchVersion

LOWER_PRECISION = "lower precision"  # linear, conv2d
FLOAT32 = "float32"  # mse_loss, cross_entropy

try:  # asked on every layer's every call: one C call for all devices (a private internal of torch)
    from torch._C import _is_any_autocast_enabled

    any_enabled: Callable[[], bool] = _is_any_autocast_enabled
except ImportError:  # pragma: no cover - then every call asks for its input's device

    def any_enabled() -> bool:
        return True


if TorchVersion(torch.__version__) >= "2.4":

    def _enabled(device_type: str) -> bool:
        return torch.is_autocast_enabled(device_type)

    def _dtype(device_type: str) -> torch.dtype:
        return torch.get_autocast_dtype(device_type)

else:  # torch 2.3 names the CPU and CUDA states apart

    def _enabled(device_type: str) -> bool:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()

    def _dtype(device_type: str) -> torch.dtype:
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def cast_as_autocast_would(policy: str, *tensors: torch.Tensor | None) -> tuple[Any, ...]:
    """``tensors`` as native autocast would hand them to an operation of ``policy``, unchanged outside autocast."""
    device_type = cast(torch.Tensor, tensors[0]).device.type  # the first is the operation's input, never None
    if not _enabled(device_type):
        return tensors
    target = _dtype(device_type) if policy == LOWER_PRECISION else torch.float32
    return tuple(
        t.to(target)
        if isinstance(t, torch.Tensor)  # anything else is left for the operation's checks to name
        and t.is_floating_point()
        and t.dtype != torch.float64
        and t.device.type == device_type
        else t
        for t in tensors
    )


def autocast_active(tensor: torch.Tensor) -> bool:
    """Is autocast on for ``tensor``'s device?"""
    return _enabled(tensor.device.type)
