"""Train a torchbp model and its native twin side by side, checking them at every step.

Both copies start from identical parameters, see the same batches in the same
order and take the same optimizer steps. After each checked backward the loss
and every parameter's gradient go through :meth:`torchbp.check.ModelPair.compare`; the
first mismatch stops training with :class:`LockstepMismatch`, which carries the
step and the report.

Two modes:

- synced (the default): before each checked step the native twin takes the
  torchbp model's parameters, so both gradients are computed at the same point
  and only rounding can separate them. Two float32 models trained
  independently drift apart by rounding, and a fixed tolerance would, after
  some hundreds of steps, flag a correct backward; synced mode never drifts.
- free-running (``free_running=True``): both train on their own. Each check
  also compares the parameters themselves, so the report shows how far the
  trajectories have drifted, and the tolerance is ``DRIFT_FACTOR`` times the
  dtype's default to allow for it. A wrong backward is off by a factor, not by
  rounding, and still fails.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import torch

from torchbp.check import ModelPair, SameRandomness, describe_layers, require_hand_derived_layers
from torchbp.compare import DEFAULT_RTOL, ComparedTensor, Report
from torchbp.convert import convert, to_native
from torchbp.distributed import across_processes, data_parallel, process_group_active
from torchbp.per_sample import PerSampleGradients, reduction_scale
from torchbp.tensorboard_log import TensorBoardLog

DRIFT_FACTOR = 100.0
NOT_RECORDING = nullcontext()  # in place of a PerSampleGradients on steps that record none

Batch = tuple[torch.Tensor, torch.Tensor]
Metric = Callable[[torch.nn.Module], float]


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
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (hand, autograd)
    mismatch_step: int | None = None  # the step whose check failed, if one did
    steps_planned: int | None = None  # what train() was asked to reach (None: one pass over the batches)
    stopped_by: str | None = None  # what ended train() early, if something did
    seconds: float = 0.0
    # Where step() spent its time: both models' forward, backward and update; comparing them;
    # writing the log (metric evaluation included).
    time_split: dict[str, float] = field(default_factory=lambda: {"training": 0.0, "checking": 0.0, "logging": 0.0})


class LockstepTrainer:
    """Train the torchbp version of ``model`` and its native twin in lockstep.

    Args:
        model: built from supported layers, native or torchbp; it is copied, not changed.
        loss_fn: a loss module (converted for each side) or a plain function of (output, target).
        optimizer: a function from parameters to an optimizer, called once per side.
            Defaults to ``torch.optim.SGD(params, lr=lr)``.
        lr: the learning rate of the default optimizer.
        check_every: compare every this many steps (1: every step).
        free_running: see the module docstring.
        rtol, atol: the comparison's tolerances (see :mod:`torchbp.compare`).
        log_dir: a fresh run folder for TensorBoard (see :func:`torchbp.new_run_dir`); None logs nothing.
        log_name: the name the run's charts are grouped under (``loss/<log_name>``; see
            :mod:`torchbp.tensorboard_log`), so that several models' runs in one log folder
            each get charts of their own. None: plain ``loss``.
        metrics: name -> function of a model, evaluated on both sides every ``metric_every``
            steps and at the end, logged under the same tag in both runs.
        metric_every: how often to evaluate metrics.
        per_sample_every: record the torchbp model's per-sample gradients every this many
            steps (None: never), from the step's own backward; their norms are logged as a
            histogram and the record carries them (``StepRecord.per_sample``).
        distributed: wrap both models in DistributedDataParallel (default: when a process
            group of more than one process is initialised). Each process then passes its own
            shard of every batch; losses are averaged over the processes and every process
            stops at the same step. Give ``log_dir`` on one process only.

    Close it (or use it in a ``with`` block) to write the log's last scalars and its verdict.

    Example::

        with LockstepTrainer(model, torch.nn.MSELoss(), lr=0.5, log_dir=new_run_dir("runs", "mine")) as trainer:
            result = trainer.train(loader, steps=1000)  # raises LockstepMismatch on a wrong gradient
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
        lr: float = 0.1,
        check_every: int = 1,
        free_running: bool = False,
        rtol: float | None = None,
        atol: float | None = None,
        log_dir: str | Path | None = None,
        log_name: str | None = None,
        metrics: dict[str, Metric] | None = None,
        metric_every: int = 100,
        per_sample_every: int | None = None,
        distributed: bool | None = None,
    ):
        if check_every < 1:
            raise ValueError(f"check_every must be a positive number of steps, got {check_every}")
        if metric_every < 1:
            raise ValueError(f"metric_every must be a positive number of steps, got {metric_every}")
        require_hand_derived_layers("LockstepTrainer", model, loss_fn)
        self.hand_model = convert(model)
        self.native_model = to_native(model)
        self.models = ModelPair(self.hand_model, self.native_model)
        self.layers = describe_layers(model, loss_fn)  # what is compared: named in every report
        self.distributed = process_group_active() if distributed is None else distributed
        # What a step runs: the models themselves, or their DDP wrappers.
        self.hand_runner = data_parallel(self.hand_model) if self.distributed else self.hand_model
        self.native_runner = data_parallel(self.native_model) if self.distributed else self.native_model
        self.hand_loss_fn, self.native_loss_fn = (
            (convert(loss_fn), to_native(loss_fn)) if isinstance(loss_fn, torch.nn.Module) else (loss_fn, loss_fn)
        )
        make_optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=lr))
        self.hand_optimizer = make_optimizer(self.hand_model.parameters())
        self.native_optimizer = make_optimizer(self.native_model.parameters())
        self.check_every, self.free_running = check_every, free_running
        self.rtol, self.atol = rtol, atol
        self.metrics, self.metric_every = dict(metrics or {}), metric_every
        if per_sample_every is not None:
            if per_sample_every < 1:
                raise ValueError(f"per_sample_every must be a positive number of steps, got {per_sample_every}")
            reduction_scale(self.hand_loss_fn, 1)  # refuses a loss whose per-sample scale is unknown
        self.per_sample_every = per_sample_every
        self.log = TensorBoardLog(log_dir, log_name) if log_dir is not None else None
        self.result = LockstepResult()
        self.stopwatch = Stopwatch(self.result.time_split)

    # -- one step -----------------------------------------------------------------

    def step(self, inputs: torch.Tensor, target: torch.Tensor) -> StepRecord:
        """Sync, forward and backward on both sides, check, log, update (checked when due)."""
        step, lap = self.result.steps, self.stopwatch.start()
        checked = step % self.check_every == 0
        if checked and not self.free_running:
            self._sync_native_to_hand()
        lap("checking")
        hand_loss, native_loss, per_sample = self._forward_backward_both(step, inputs, target)
        lap("training")
        report = self._compare(step, hand_loss, native_loss) if checked else None
        if self.distributed:
            hand_loss, native_loss, report = self._across_processes(hand_loss, native_loss, report)
        record = self._record(step, hand_loss, native_loss, report, per_sample)
        lap("checking")
        if self.log is not None:
            self.log.step(step, record.hand_loss, record.autograd_loss,
                          *((record.loss_difference, record.max_grad_error) if checked else (None, None)),
                          grad_norms=None if per_sample is None else per_sample.grad_norms())
        lap("logging")
        if report is not None and not report.ok:
            self.result.mismatch_step = step
            raise LockstepMismatch(step, report)  # before the update: both models stay at the failing point
        self.hand_optimizer.step()
        self.native_optimizer.step()
        lap("training")
        return record

    def _forward_backward_both(self, step: int, inputs: torch.Tensor, target: torch.Tensor):
        """Both losses, each side's gradients in its ``.grad``, and the torchbp side's per-sample record when due."""
        per_sample = None
        if self.per_sample_every is not None and step % self.per_sample_every == 0:
            per_sample = PerSampleGradients(self.hand_model, reduction_scale(self.hand_loss_fn, len(inputs), target))
        randomness = SameRandomness()  # dropout and the like draw alike on both sides
        with per_sample or NOT_RECORDING:
            hand_loss = _forward_backward(self.hand_runner, self.hand_loss_fn, self.hand_optimizer, inputs, target)
        randomness.replay()
        native_loss = _forward_backward(self.native_runner, self.native_loss_fn, self.native_optimizer, inputs, target)
        return hand_loss, native_loss, per_sample

    @property
    def mode(self) -> str:
        return "free-running" if self.free_running else "synced"

    def _compare(self, step: int, hand_loss: torch.Tensor, native_loss: torch.Tensor) -> Report:
        rtol = self.rtol
        if self.free_running and rtol is None:
            rtol = DRIFT_FACTOR * DEFAULT_RTOL.get(hand_loss.dtype, 0.0)
        report = self.models.compare(
            f"lockstep step {step} ({self.mode})", (hand_loss, native_loss),
            # In free-running mode the update changes the parameters in place: measure them now.
            parameters=self.free_running, rtol=rtol, atol=self.atol, defer_equal=not self.free_running,
        )
        report.layers = self.layers
        return report

    def _sync_native_to_hand(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.models.native_parameters, self.models.hand_parameters)

    @staticmethod
    def _across_processes(hand_loss, native_loss, report):
        hand_loss, native_loss, every_process_ok = across_processes(hand_loss, native_loss, report is None or report.ok)
        if report is not None and report.ok and not every_process_ok:
            report.append(ComparedTensor(
                "other processes", None, None, float("nan"), float("nan"), 0.0, 0.0, False,
                "another process's check failed at this step; its report is in its own output",
            ))
        return hand_loss, native_loss, report

    def _record(self, step, hand_loss, native_loss, report, per_sample) -> StepRecord:
        hand, native = hand_loss.item(), native_loss.item()  # on a GPU the first waits, the second is ready
        if report is None:
            loss_difference = max_grad_error = float("nan")
        else:
            loss_difference = abs(hand - native)
            max_grad_error = report.max_rel_error(".grad")
        result = self.result
        result.steps += 1
        result.hand_loss, result.autograd_loss = hand, native
        if report is not None:
            result.checks += 1
            result.max_loss_difference = _max_keeping_nan(result.max_loss_difference, loss_difference)
            result.max_grad_error = _max_keeping_nan(result.max_grad_error, max_grad_error)
        return StepRecord(step, hand, native, loss_difference, max_grad_error, report, per_sample)

    # -- metrics and the whole loop ------------------------------------------------------

    def evaluate(self, step: int | None = None) -> dict[str, tuple[float, float]]:
        """Every metric on both models, logged at ``step``; by default the number of steps taken,
        which is the step whose loss is taken at the current parameters."""
        step = self.result.steps if step is None else step
        values, lap = {}, self.stopwatch.start()
        with torch.no_grad():
            for name, metric in self.metrics.items():
                values[name] = (float(metric(self.hand_model)), float(metric(self.native_model)))
                if self.log is not None:
                    self.log.metric(name, *values[name], step)
        lap("logging")
        self.result.metrics = values
        return values

    def train(
        self,
        batches: Iterable[Batch],
        steps: int | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> LockstepResult:
        """Run ``steps`` lockstep steps over ``batches`` (re-iterated as epochs), or one pass when
        ``steps`` is None. ``on_step`` sees each record (a progress bar, extra logging)."""
        started = time.perf_counter()
        self.result.steps_planned = None if steps is None else self.result.steps + steps
        try:
            for inputs, target in self._schedule(batches, steps):
                if self.metrics and self.result.steps % self.metric_every == 0:
                    self.evaluate()  # at the parameters this step's loss is taken at
                record = self.step(inputs, target)
                if on_step is not None:
                    on_step(record)
            if self.metrics:
                self.evaluate()  # after the last update
        except LockstepMismatch:
            raise
        except KeyboardInterrupt:
            self.result.stopped_by = "an interrupt"
            raise
        except SystemExit as stop:
            self.result.stopped_by = f"an exit with status {stop.code}" + (" (SIGTERM)" if stop.code == 143 else "")
            raise
        except Exception as error:
            self.result.stopped_by = f"an error ({type(error).__name__})"
            raise
        finally:
            self.result.seconds += time.perf_counter() - started
            if self.log is not None:
                self.log.flush()
        return self.result

    @staticmethod
    def _schedule(batches: Iterable[Batch], steps: int | None):
        if steps is None:
            return iter(batches)
        if steps < 0:
            raise ValueError(f"steps must be zero or more, got {steps}")
        return islice(_epochs(batches), steps)

    def __enter__(self) -> LockstepTrainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, hparams: dict | None = None) -> None:
        """Write the verdict (a text card) and the hyperparameters, and close the log."""
        if self.log is not None:
            self.log.close(verdict=self.verdict(), step=self.result.steps, hparams=hparams)

    def verdict(self) -> str:
        """The run's result in a few lines of markdown: MATCH or MISMATCH, what was checked, what was compared."""
        result = self.result
        if result.mismatch_step is not None:
            headline = f"**MISMATCH** at step {result.mismatch_step}: the report is in the program's output."
        elif result.stopped_by is not None:
            planned = "" if result.steps_planned is None else f" of {result.steps_planned}"
            headline = (f"**STOPPED** by {result.stopped_by} after {result.steps}{planned} steps; "
                        f"the {result.checks} checked steps before it agreed.")
        elif result.checks == 0:
            headline = "**NOT CHECKED**: no step was compared."
        else:
            headline = f"**MATCH**: the two models agreed at every one of {result.checks} checked steps."
        return "\n".join([
            headline,
            "",
            "| what | figure |",
            "|---|---|",
            f"| steps taken, checked | {result.steps}, {result.checks} (every {self.check_every}, {self.mode}) |",
            f"| largest \\|Δloss\\| | {result.max_loss_difference:.1e} |",
            f"| largest relative gradient error | {result.max_grad_error:.1e} (0: bit for bit) |",
            f"| layers | {self.layers} |",
        ])


def _forward_backward(model, loss_fn, optimizer, inputs, target) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), target)
    loss.backward()
    return loss.detach()


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


def _epochs(batches: Iterable[Batch]):
    """The batches again and again; stops when a pass yields nothing (an exhausted iterator)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def _max_keeping_nan(a: float, b: float) -> float:
    """max() that lets a NaN through, so a run that diverged does not show an error of 0."""
    return float("nan") if a != a or b != b else max(a, b)
