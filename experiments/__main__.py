"""python -m experiments [NAME ...]: train torchbp models beside their native twins, in lockstep.

Installed, the same program is the command torchbp-experiments. Exit status: 0
when every experiment matched, 1 when any mismatched (its report is printed), 2
on a usage error, 3 on an unexpected error (a bug: its traceback is printed),
130 when interrupted (Ctrl-C) and 143 when terminated (SIGTERM), after the
summary of the experiments run so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

# Each experiment registers itself as it is imported: this order is the default run's.
from experiments import seed, xor, spiral, digits, digits_cnn, digits_layernorm, digits_resnet, gpt  # noqa: F401  # isort: skip
from experiments.derivation.explain import worked_example
from experiments.lab.registry import EXPERIMENTS, Config
from experiments.lab.runner import Outcome, run_experiment, summary_table

PROG = "python -m experiments"  # the program's name run as a module (as the installed command, its own)
INTERRUPTED, TERMINATED = 130, 143  # exit statuses: 128 + SIGINT's and SIGTERM's numbers


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def seed_int(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError
    return value


positive_int.__name__ = "positive integer"
positive_float.__name__ = "positive number"
seed_int.__name__ = "seed (0 to 2**63 - 1)"


def program_name(called_as: str) -> str:
    """What the usage line and the messages call the program, from ``sys.argv[0]``: the installed
    command's name (torchbp-experiments), or python -m experiments where it runs as a module (``argv[0]``
    is then the path of this file)."""
    name = Path(called_as).name
    return PROG if name in ("", Path(__file__).name) else name


def parser(prog: str = PROG) -> Parser:
    p = Parser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"experiments to run (default: all: {', '.join(EXPERIMENTS)})"
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list the experiments (or the NAMEs given), their defaults and optimizers, then exit",
    )
    p.add_argument("--steps", type=positive_int, help="training steps (default: each experiment's own)")
    p.add_argument(
        "--lr",
        type=positive_float,
        help="learning rate of each experiment's optimizer (default: each experiment's own; --list names both)",
    )
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (seed and xor are full-batch)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for data, initialisation and order (default 0)")
    p.add_argument(
        "--dtype", choices=["float32", "float64"], help="floating-point type (default: each experiment's own)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train (default cpu)")
    p.add_argument("--logdir", default="runs", help="TensorBoard log folder (default runs)")
    p.add_argument("--check-every", type=positive_int, default=1, help="compare gradients every N steps (default 1)")
    p.add_argument(
        "--free-running", action="store_true", help="let both models train on their own and report their drift"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="with seed: print the derivation worked through on its network (docs/derivation.md), then exit",
    )
    return p


def configs(args, prog: str = PROG) -> dict[str, Config]:
    unknown = [name for name in args.names if name not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown experiment {unknown[0]!r} (choose from {', '.join(EXPERIMENTS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available on this machine")
    overrides = {
        key: value
        for key, value in dict(
            steps=args.steps,
            lr=args.lr,
            dtype=args.dtype,
            seed=args.seed,
            device=args.device,
            check_every=args.check_every,
            free_running=args.free_running,
        ).items()
        if value is not None
    }
    chosen = {}
    for name in dict.fromkeys(args.names or EXPERIMENTS):  # in order, without repeats
        experiment = EXPERIMENTS[name]
        if experiment.full_batch and args.batch_size is not None:
            print(
                f"{prog}: note: --batch-size does not apply to {name}, which trains on all its samples at once",
                file=sys.stderr,
            )
        batch = {} if experiment.full_batch or args.batch_size is None else {"batch_size": args.batch_size}
        chosen[name] = dataclasses.replace(experiment.defaults, **overrides, **batch)
    return chosen


def check_logdir(logdir: str) -> None:
    try:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=logdir):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to --logdir {logdir!r}: {error.strerror or error}") from None


def list_experiments(chosen: dict[str, Config]) -> str:
    """Each experiment's description, defaults and optimizer, after its name in a column as wide as the longest."""
    width = max(len(name) for name in chosen)
    lines = []
    for name in chosen:
        experiment = EXPERIMENTS[name]
        d = experiment.defaults
        batch = "full batch" if d.batch_size is None else f"batch {d.batch_size}"
        lines.append(f"{name:{width}}  {experiment.description}")
        lines.append(f"{'':{width}}  defaults: {d.steps} steps, lr {d.lr}, {batch}, {d.dtype}")
        lines.append(f"{'':{width}}  optimizer: {experiment.optimizer}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The program, called ``prog`` in its usage line and messages; returns its exit status."""
    try:
        args = parser(prog).parse_args(argv)
        chosen = configs(args, prog)
        if args.explain:
            if list(chosen) != ["seed"] or not args.names:
                raise UsageError(f"--explain goes with the seed experiment alone: {prog} seed --explain")
            print(worked_example(args.seed))
            return 0
        if args.list:
            print(list_experiments(chosen))
            return 0
        check_logdir(args.logdir)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2

    rank, world = start_processes(chosen)
    chosen = {name: on_this_process(config, world) for name, config in chosen.items()}

    def terminate(*_):
        sys.exit(TERMINATED)  # unwinds through the trainer, which writes its verdict and closes its log

    outcomes: list[Outcome] = []
    previous_handler = signal.signal(signal.SIGTERM, terminate)
    try:
        logdir = args.logdir if rank == 0 else None
        run_all(chosen, logdir, sys.stderr.isatty() and rank == 0, rank, world, outcomes)
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and stop.code != TERMINATED:
            raise  # not terminate()'s
        interrupted = isinstance(stop, KeyboardInterrupt)
        if rank == 0:
            report_stop(outcomes, "interrupted" if interrupted else "terminated", prog, args.logdir)
        return INTERRUPTED if interrupted else TERMINATED
    except Exception:
        traceback.print_exc()
        print(
            f"{prog}: error: unexpected failure (a bug in torchbp or an experiment; traceback above)", file=sys.stderr
        )
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if world > 1:  # after a failure the process just exits, and torchrun stops the others
        dist.barrier()  # every process done with the group before any tears it down
        dist.destroy_process_group()
    if rank == 0:
        print(summary_table(outcomes))
        where = f"{args.logdir}/<experiment>/<run-id>"
        print(f"\nTensorBoard logs: {where} (view with: tensorboard --logdir {args.logdir})")
    return 0 if all(outcome.matched for outcome in outcomes) else 1


def start_processes(chosen: dict[str, Config]) -> tuple[int, int]:
    """(rank, world size): under torchrun, join its process group (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    on_gpu = any(config.device == "cuda" for config in chosen.values())
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if on_gpu else "gloo")
    return dist.get_rank(), world


def on_this_process(config: Config, world: int) -> Config:
    """Under torchrun with CUDA, each process trains on its own GPU."""
    if world > 1 and config.device == "cuda":
        return dataclasses.replace(config, device=f"cuda:{torch.cuda.current_device()}")
    return config


def run_all(
    chosen: dict[str, Config], logdir: str | None, progress: bool, rank: int, world: int, outcomes: list[Outcome]
) -> None:
    """Run the experiments in turn, adding each one's outcome to ``outcomes`` as it ends, so that the caller
    has them however the run ends: one stopped by an interrupt or SIGTERM is added with its steps so far,
    then its stop goes on up."""
    for name, config in chosen.items():
        outcome = run_experiment(EXPERIMENTS[name], config, logdir, progress, rank, world)
        outcomes.append(outcome)
        if outcome.stop is not None:
            raise outcome.stop
        if outcome.mismatch is not None and rank == 0:
            print(f"{name}: {outcome.mismatch}\n")


def report_stop(outcomes: list[Outcome], how: str, prog: str, logdir: str) -> None:
    """After an interrupt or SIGTERM: the summary of the experiments run so far (the stopped one's row
    says STOPPED), then which run folders hold logs, if any do."""
    if outcomes:
        print(summary_table(outcomes), flush=True)
    written = [str(outcome.run_dir) for outcome in outcomes if outcome.run_dir is not None]
    where = "no logs were written"
    if written:
        where = f"the logs written so far are in {', '.join(written)} (view with: tensorboard --logdir {logdir})"
    print(f"{prog}: {how}; {where}", file=sys.stderr)


def entry_point() -> None:
    """The torchbp-experiments command, and python -m experiments: the program, named as it was called."""
    try:
        status = main(prog=program_name(sys.argv[0] if sys.argv else ""))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)


if __name__ == "__main__":
    entry_point()
