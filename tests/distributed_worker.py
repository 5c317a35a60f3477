"""Run by tests/test_distributed.py under torchrun: one DDP training step of a torchbp model.

Usage: distributed_worker.py OUT_FILE [planted-on-rank-1]
"""

import sys

import torch
import torch.distributed as dist

import torchbp
from torchbp.functions import LinearFunction
from torchbp.lockstep import LockstepMismatch, LockstepTrainer

BATCH = 8


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2), torch.nn.Sigmoid()
    ).double()


def data():
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(BATCH, 3, generator=generator, dtype=torch.float64),
        torch.rand(BATCH, 2, generator=generator, dtype=torch.float64),
    )


def main(out_file: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = data()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    if mode == "step":
        ddp = torch.nn.parallel.DistributedDataParallel(torchbp.convert(model()))
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
        torchbp.nn.MSELoss()(ddp(x[shard]), y[shard]).backward()
        grads = {name: p.grad.clone() for name, p in ddp.module.named_parameters()}
        optimizer.step()
        if rank == 0:
            torch.save({"grads": grads, "params": dict(ddp.module.named_parameters())}, out_file)
    else:  # planted-on-rank-1: a wrong weight gradient on one process only, before DDP averages it
        if rank == 1:
            original = LinearFunction.backward

            def wrong(ctx, delta):
                grad_a_prev, grad_W, grad_b = original(ctx, delta)
                return grad_a_prev, None if grad_W is None else grad_W * 1.5, grad_b

            LinearFunction.backward = staticmethod(wrong)
        trainer = LockstepTrainer(model(), torch.nn.MSELoss(), lr=0.5)
        try:
            trainer.step(x[shard], y[shard])
            outcome = "no mismatch"
        except LockstepMismatch as mismatch:
            outcome = f"mismatch at step {mismatch.step}: " + ", ".join(r.name for r in mismatch.report.mismatches)
        with open(f"{out_file}.{rank}", "w") as f:
            f.write(outcome)
    dist.barrier()  # every process done with the group before any tears it down
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "step")
