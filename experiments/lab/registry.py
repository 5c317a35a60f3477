"""What an experiment is, and the table of them that ``python -m experiments`` runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from torchbp.lockstep import LockstepTrainer, StepRecord


@dataclass(frozen=True)
class Config:
    """The settings of one experiment's run: its defaults, overridden from the command line."""

    steps: int
    lr: float
    batch_size: int | None  # None: full batch
    dtype: str
    seed: int = 0
    device: str = "cpu"
    check_every: int = 1
    free_running: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def hparams(self) -> dict:
        return {k: ("full" if v is None else v) for k, v in asdict(self).items()}


@dataclass
class Setup:
    """What an experiment hands the trainer."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    metrics: dict[str, Callable[[torch.nn.Module], float]] = field(default_factory=dict)
    headline_metric: str | None = None  # the metric the summary table shows
    baseline_metric: str | None = None  # one the summary shows beside it (gpt: the bigram model's loss)
    metric_every: int = 100
    per_sample_every: int | None = 100  # per-sample gradient norms, as a histogram
    # Given the trainer before training, returns what to do after each step (extra logging).
    watch: Callable[[LockstepTrainer], Callable[[StepRecord], None]] | None = None
    # Given the trainer once training has ended, however it ended (a mismatch, SIGTERM), before its log closes.
    finish: Callable[[LockstepTrainer], None] | None = None


class OptimizerChoice:
    """Which optimizer an experiment trains with: a ``torch.optim`` class and the options it sets besides
    the learning rate, as in ``OptimizerChoice(torch.optim.SGD, momentum=0.9)``. The runner builds it
    (:meth:`at`) and ``--list`` shows it, from this one statement."""

    def __init__(self, kind: type[torch.optim.Optimizer] = torch.optim.SGD, **options: float):
        self.kind, self.options = kind, options

    def at(self, lr: float) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]:
        """Parameters -> this optimizer at learning rate ``lr``: the trainer's ``optimizer=``."""
        return lambda parameters: self.kind(parameters, lr=lr, **self.options)

    def __str__(self) -> str:
        """``Adam``, ``SGD with momentum 0.9``."""
        settings = ", ".join(f"{name} {value}" for name, value in self.options.items())
        return f"{self.kind.__name__} with {settings}" if settings else self.kind.__name__


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    defaults: Config
    build: Callable[[Config], Setup]
    full_batch: bool = False  # --batch-size does not apply
    optimizer: OptimizerChoice = field(default_factory=OptimizerChoice)  # plain SGD, the trainer's default


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(
    name: str,
    description: str,
    full_batch: bool = False,
    optimizer: OptimizerChoice | None = None,
    **defaults,
):
    """Register the decorated ``build(config) -> Setup`` under ``name``; ``optimizer`` is the one it trains
    with (None: plain SGD)."""

    def register(build: Callable[[Config], Setup]) -> Callable[[Config], Setup]:
        chosen = optimizer or OptimizerChoice()
        EXPERIMENTS[name] = Experiment(name, description, Config(**defaults), build, full_batch, chosen)
        return build

    return register
