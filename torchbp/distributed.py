"""The lockstep trainer across processes (torchrun, DistributedDataParallel).

Each process trains DDP-wrapped copies of both models on its own shard of
every batch; DDP averages the gradients, so every process holds the same
gradients and compares the same numbers. What differs between processes (the
loss of each shard, a verdict that rests on it) is combined here, so that all
of them log the same figures and stop at the same step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from torchbp.compare import ComparedTensor, Report


def process_group_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def data_parallel(model: torch.nn.Module) -> DistributedDataParallel:
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[parameter.device])
    return DistributedDataParallel(model)


def across_processes(
    hand_loss: torch.Tensor, native_loss: torch.Tensor, report: Report | None
) -> tuple[torch.Tensor, torch.Tensor, Report | None]:
    """The mean of each loss over the processes, and ``report`` (None on a step that was not checked)
    failed by an added row where this process's check passed and another's did not."""
    ok = report is None or report.ok
    failed = torch.tensor(0.0 if ok else 1.0, device=hand_loss.device, dtype=torch.float64)
    figures = torch.stack([hand_loss.double(), native_loss.double(), failed])
    dist.all_reduce(figures)
    world = dist.get_world_size()
    if report is not None and report.ok and bool(figures[2] != 0):
        report.append(
            ComparedTensor(
                "other processes",
                None,
                None,
                float("nan"),
                float("nan"),
                0.0,
                0.0,
                False,
                "another process's check failed at this step; its report is in its own output",
            )
        )
    return (figures[0] / world).to(hand_loss.dtype), (figures[1] / world).to(native_loss.dtype), report
