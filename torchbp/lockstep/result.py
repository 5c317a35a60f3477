"""What a lockstep run found: each step's record, the whole run's result and its verdict, and where its time went.

The trainer hands every step's losses and report to :meth:`LockstepResult.add_step`;
:meth:`LockstepResult.run` wraps a call of ``train()``, timing it and recording
what ended it early; :meth:`LockstepResult.verdict` says in a few lines of
markdown what the run showed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from torchbp.compare import Report
from torchbp.per_sample import PerSampleGradients


class LockstepMismatch(AssertionError):
    """The torchbp model and its native twin disagreed; ``.step`` and ``.report`` say where."""

    def __init__(self, step: int, report: Report):
        self.step, self.report = step, report
        super().__init__(f"lockstep mismatch at step {step}\n{report}")


class StepRecord(NamedTuple):
    """What one lockstep step measured. Errors are NaN on a step that was not checked."""

    step: int
    hand_loss: float
    autograd_loss: float
    loss_difference: float  # |Δloss|
    max_grad_error: float  # the largest max_rel_error over the gradient rows
    error_over_tolerance: float  # the largest error as a fraction of its tolerance, over every row
    report: Report | None
    per_sample: PerSampleGradients | None = None  # the torchbp side's, on steps that record them


@dataclass
class LockstepResult:
    """A whole run: its last losses, worst differences and final metrics."""

    steps: int = 0
    checks: int = 0
    hand_loss: float = float("nan")
    autograd_loss: float = float("nan")
    max_loss_difference: float = 0.0
    max_grad_error: float = 0.0
    max_error_over_tolerance: float = 0.0  # 0: bit for bit; at most 1 where every check passed
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (hand, autograd)
    mismatch_step: int | None = None  # the step whose check failed, if one did
    steps_planned: int | None = None  # what train() was asked to reach (None: one pass over the batches)
    stopped_by: str | None = None  # what ended train() early, if something did
    seconds: float = 0.0
    # Where step() spent its time: both models' forward, backward and update; comparing them;
    # writing the log (metric evaluation included).
    time_split: dict[str, float] = field(default_factory=lambda: {"training": 0.0, "checking": 0.0, "logging": 0.0})

    def add_step(
        self,
        step: int,
        hand_loss: torch.Tensor,
        native_loss: torch.Tensor,
        report: Report | None,
        per_sample: PerSampleGradients | None = None,
    ) -> StepRecord:
        """Count one step (a checked one where there is a ``report``) and return its record."""
        hand, native = hand_loss.item(), native_loss.item()  # on a GPU the first waits, the second is ready
        self.steps += 1
        self.hand_loss, self.autograd_loss = hand, native
        if report is None:
            return StepRecord(step, hand, native, float("nan"), float("nan"), float("nan"), None, per_sample)
        loss_difference, max_grad_error = abs(hand - native), report.max_rel_error(".grad")
        error_over_tolerance = report.max_share_of_tolerance()
        self.checks += 1
        self.max_loss_difference = _max_keeping_nan(self.max_loss_difference, loss_difference)
        self.max_grad_error = _max_keeping_nan(self.max_grad_error, max_grad_error)
        self.max_error_over_tolerance = _max_keeping_nan(self.max_error_over_tolerance, error_over_tolerance)
        return StepRecord(step, hand, native, loss_difference, max_grad_error, error_over_tolerance, report, per_sample)

    @contextmanager
    def run(self, steps: int | None) -> Iterator[None]:
        """Around one call of ``train()`` that is to take ``steps`` more steps: adds its seconds,
        and records what ended it early (an interrupt, an exit, an error; a mismatch has its own field)."""
        started = time.perf_counter()
        self.steps_planned = None if steps is None else self.steps + steps
        try:
            yield
        except LockstepMismatch:
            raise
        except (KeyboardInterrupt, SystemExit, Exception) as stop:
            self.stopped_by = what_stopped(stop)
            raise
        finally:
            self.seconds += time.perf_counter() - started

    @property
    def outcome(self) -> str:
        """The verdict in one word: MISMATCH, STOPPED, NOT CHECKED or MATCH."""
        if self.mismatch_step is not None:
            return "MISMATCH"
        if self.stopped_by is not None:
            return "STOPPED"
        return "NOT CHECKED" if self.checks == 0 else "MATCH"

    def verdict(self, check_every: int, mode: str, layers: str) -> str:
        """The run in a few lines of markdown: MATCH or MISMATCH, what was checked, what was compared.
        ``check_every``, ``mode`` and ``layers`` are the trainer's: how often, how, and which layers."""
        if self.mismatch_step is not None:
            headline = f"**{self.outcome}** at step {self.mismatch_step}: the report is in the program's output."
        elif self.stopped_by is not None:
            planned = "" if self.steps_planned is None else f" of {self.steps_planned}"
            headline = (
                f"**STOPPED** by {self.stopped_by} after {self.steps}{planned} steps; "
                f"the {self.checks} checked steps before it agreed."
            )
        elif self.checks == 0:
            headline = "**NOT CHECKED**: no step was compared."
        else:
            headline = f"**MATCH**: the two models agreed at every one of {self.checks} checked steps."
        return "\n".join(
            [
                headline,
                "",
                "| what | figure |",
                "|---|---|",
                f"| steps taken, checked | {self.steps}, {self.checks} (every {check_every}, {mode}) |",
                f"| largest \\|Δloss\\| | {self.max_loss_difference:.1e} |",
                f"| largest error / tolerance | {self.max_error_over_tolerance:.1e} (0: bit for bit; 1: the limit) |",
                f"| largest relative gradient error | {self.max_grad_error:.1e} (0: bit for bit) |",
                f"| layers | {layers} |",
            ]
        )


def what_stopped(stop: BaseException) -> str:
    """How a verdict names what ended a run early; exit status 143 is the runner's answer to SIGTERM."""
    if isinstance(stop, KeyboardInterrupt):
        return "an interrupt"
    if isinstance(stop, SystemExit):
        return f"an exit with status {stop.code}" + (" (SIGTERM)" if stop.code == 143 else "")
    return f"an error ({type(stop).__name__})"


class Stopwatch:
    """Adds up the seconds spent in each named part of a step, lap by lap::

    lap = stopwatch.start()
    ...  # some checking
    lap("checking")  # the time since start() (or the last lap) goes to "checking"
    """

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def start(self) -> Callable[[str], None]:
        self.last = time.perf_counter()
        return self.lap

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part] += now - self.last
        self.last = now


def _max_keeping_nan(a: float, b: float) -> float:
    """max() that lets a NaN through, so a run that diverged does not show an error of 0."""
    return float("nan") if a != a or b != b else max(a, b)
