"""The lockstep trainer: one step of both models, checked when due; the loop; the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import torch

from torchbp.check import ModelPair, SameRandomness, describe_layers, require_hand_derived_layers
from torchbp.convert import convert, to_native
from torchbp.distributed import across_processes, data_parallel, process_group_active
from torchbp.lockstep.comparison import StepComparison
from torchbp.lockstep.result import LockstepMismatch, LockstepResult, StepRecord, Stopwatch
from torchbp.per_sample import PerSampleGradients, reduction_scale
from torchbp.tensorboard_log import SHOWN, TensorBoardLog

NOT_RECORDING = nullcontext()  # in place of a PerSampleGradients on steps that record none

Batch = tuple[torch.Tensor, torch.Tensor]
Metric = Callable[[torch.nn.Module], float]
LossFunction = Callable[[Any, Any], torch.Tensor]
Settings = dict[str, object]


class LockstepTrainer:
    """Train the torchbp version of ``model`` and its native twin in lockstep.

    Args:
        model: built from supported layers, native or torchbp; it is copied, not changed.
        loss_fn: a loss module (converted for each side) or a plain function of (output, target).
        optimizer: parameters -> optimizer, called once per side; by default ``torch.optim.SGD(params, lr=lr)``.
        lr: the default optimizer's learning rate.
        check_every: compare every this many steps (1: every step).
        free_running: let both models train on their own (see :mod:`torchbp.lockstep`).
        rtol, atol: the comparison's tolerances (see :mod:`torchbp.compare`).
        log_dir: a fresh TensorBoard run folder (see :func:`torchbp.new_run_dir`); None logs nothing.
        log_name: what the run's charts are grouped under (``loss/<log_name>``, see :mod:`torchbp.tensorboard_log`),
            so that several models' runs in one log folder get charts of their own. None: plain ``loss``.
        metrics: name -> function of a model, evaluated on both sides every ``metric_every`` steps and at
            the end, logged under one tag in both runs.
        metric_every: how often to evaluate metrics.
        per_sample_every: record the torchbp model's per-sample gradients every this many steps (None: never),
            from the step's own backward; logged as a histogram of their norms, carried by ``StepRecord.per_sample``.
        distributed: wrap both models in DistributedDataParallel, each process passing its own shard of every
            batch (default: inside a process group of more than one process; see :mod:`torchbp.distributed`).
            Give ``log_dir`` on one process only.

    Close it (or use it in a ``with`` block) to write the log's last scalars and its verdict.
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
        _require_positive_steps(check_every=check_every, metric_every=metric_every, per_sample_every=per_sample_every)
        require_hand_derived_layers("LockstepTrainer", model, loss_fn)
        self.hand_model, self.native_model = convert(model), to_native(model)
        self.layers = describe_layers(model, loss_fn)  # what is compared: named in every report
        pair = ModelPair(self.hand_model, self.native_model)
        self.comparison = StepComparison(pair, self.layers, check_every, free_running, rtol, atol)
        self.distributed = process_group_active() if distributed is None else distributed
        make_optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=lr))
        self.hand = Side.of(self.hand_model, convert, loss_fn, make_optimizer, self.distributed)
        self.native = Side.of(self.native_model, to_native, loss_fn, make_optimizer, self.distributed)
        self.hand_loss_fn, self.hand_optimizer = self.hand.loss_fn, self.hand.optimizer
        self.metrics, self.metric_every = dict(metrics or {}), metric_every
        if per_sample_every is not None:
            reduction_scale(self.hand_loss_fn, 1)  # refuses a loss whose per-sample scale is unknown
        self.per_sample_every = per_sample_every
        self.log = TensorBoardLog(log_dir, log_name) if log_dir is not None else None
        self.result = LockstepResult()
        self.stopwatch = Stopwatch(self.result.time_split)

    def step(self, inputs: torch.Tensor, target: torch.Tensor) -> StepRecord:
        """Sync, forward and backward on both sides, check, log, update (checked when due)."""
        step, lap = self.result.steps, self.stopwatch.start()
        checked = self.comparison.due(step)
        if checked:
            self.comparison.sync()
        lap("checking")
        per_sample = None
        if self.per_sample_every is not None and step % self.per_sample_every == 0:
            per_sample = PerSampleGradients(self.hand_model, reduction_scale(self.hand_loss_fn, len(inputs), target))
        randomness = SameRandomness()  # dropout and the like draw alike on both sides
        with per_sample or NOT_RECORDING:
            hand_loss = self.hand.forward_backward(inputs, target)
        randomness.replay()
        native_loss = self.native.forward_backward(inputs, target)
        lap("training")
        report = self.comparison.compare(step, hand_loss, native_loss) if checked else None
        if self.distributed:
            hand_loss, native_loss, report = across_processes(hand_loss, native_loss, report)
        record = self.result.add_step(step, hand_loss, native_loss, report, per_sample)
        lap("checking")
        if self.log is not None:
            log_step(self.log, record, checked, per_sample)
        lap("logging")
        if report is not None and not report.ok:
            self.result.mismatch_step = step
            raise LockstepMismatch(step, report)  # before the update: both models stay at the failing point
        self.hand.optimizer.step()
        self.native.optimizer.step()
        lap("training")
        return record

    def evaluate(self, step: int | None = None) -> dict[str, tuple[float, float]]:
        """Every metric on both models, logged at ``step`` (by default the steps taken: the step whose loss is
        taken at the current parameters), in eval mode (no dropout; batch norm by its running statistics,
        which it leaves alone), each model given back in the mode it was in."""
        step = self.result.steps if step is None else step
        values, lap = {}, self.stopwatch.start()
        with in_eval_mode(self.hand_model, self.native_model), torch.no_grad():
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
        try:
            with self.result.run(steps):
                for inputs, target in _schedule(batches, steps):
                    if self.metrics and self.result.steps % self.metric_every == 0:
                        self.evaluate()  # at the parameters this step's loss is taken at
                    record = self.step(inputs, target)
                    if on_step is not None:
                        on_step(record)
                if self.metrics:
                    self.evaluate()  # after the last update
        finally:
            if self.log is not None:
                self.log.flush()
        return self.result

    def __enter__(self) -> LockstepTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(
        self, hparams: Settings | None = None, metric: str | None = None, settings: Settings | None = None
    ) -> None:
        """Write the verdict card and, given ``hparams``, the HParams row (:func:`closing_entries`); close the log."""
        if self.log is not None:
            verdict, row, summary = closing_entries(self.result, self.verdict(), hparams, metric, settings)
            self.log.close(verdict=verdict, step=self.result.steps, hparams=row, summary=summary)

    def verdict(self) -> str:
        """The run's result in a few lines of markdown: MATCH or MISMATCH, what was checked, what was compared."""
        return self.result.verdict(self.comparison.every, self.comparison.mode, self.layers)


def log_step(log: TensorBoardLog, record: StepRecord, checked: bool, per_sample: PerSampleGradients | None) -> None:
    """A step's losses; on a checked step how far apart the two models were; the per-sample norms it recorded."""
    difference, error, share = (
        (record.loss_difference, record.max_grad_error, record.error_over_tolerance) if checked else (None, None, None)
    )
    norms = None if per_sample is None else per_sample.grad_norms()
    log.step(record.step, record.hand_loss, record.autograd_loss, difference, error, norms, share)


def closing_entries(
    result: LockstepResult,
    verdict: str,
    hparams: dict[str, object] | None,
    metric: str | None,
    settings: dict[str, object] | None,
) -> tuple[str, dict[str, object] | None, dict[str, float | None]]:
    """What a closing log writes: the verdict card (with ``settings`` and the last value of ``metric``, one of
    the trainer's ``metrics``, as rows where given); the HParams row, ``hparams`` with the verdict in one word
    among the first five settings, which TensorBoard shows at first (None without ``hparams``); and its
    columns, the torchbp model's final loss, the largest error over tolerance and the metric's value."""
    row = None
    if hparams is not None:
        row = {**dict(list(hparams.items())[: SHOWN - 1]), "verdict": result.outcome, **hparams}
    value = result.metrics[metric][0] if metric in result.metrics else None
    if value is not None:
        verdict += f"\n| metric | {metric} {value:.4g} |"
    if settings:
        verdict += "\n| settings | " + ", ".join(f"{key} {setting}" for key, setting in settings.items()) + " |"
    error = result.max_error_over_tolerance if result.checks else None
    return verdict, row, {"final_loss": result.hand_loss, "error_over_tolerance": error, "metric": value}


class Side(NamedTuple):
    """One of the two models in lockstep, with what a step calls (the model, or its DDP wrapper), its loss
    function (converted to the side, if a module) and its optimizer."""

    model: torch.nn.Module
    runner: torch.nn.Module
    loss_fn: LossFunction
    optimizer: torch.optim.Optimizer

    @classmethod
    def of(
        cls,
        model: torch.nn.Module,
        to_side: Callable[[torch.nn.Module], torch.nn.Module],
        loss_fn: LossFunction,
        make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
        distributed: bool,
    ) -> Side:
        side_loss_fn = to_side(loss_fn) if isinstance(loss_fn, torch.nn.Module) else loss_fn
        runner = data_parallel(model) if distributed else model
        return cls(model, runner, side_loss_fn, make_optimizer(model.parameters()))

    def forward_backward(self, inputs: Any, target: Any) -> torch.Tensor:
        """Forward, loss and backward, the gradients left in the model's ``.grad``; the loss, detached."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.runner(inputs), target)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        return loss.detach()


@contextmanager
def in_eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """The models in eval mode inside the block, and in the mode each was in after it."""
    modes = [(model, model.training) for model in models]
    try:
        for model, _ in modes:
            model.eval()
        yield
    finally:
        for model, training in modes:
            model.train(training)


def _schedule(batches: Iterable[Batch], steps: int | None) -> Iterator[Batch]:
    if steps is None:
        return iter(batches)
    if steps < 0:
        raise ValueError(f"steps must be zero or more, got {steps}")
    return islice(_epochs(batches), steps)


def _epochs(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches again and again; stops when a pass yields nothing (an exhausted iterator)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def _require_positive_steps(**intervals: int | None) -> None:
    """Each of ``intervals`` (None: never) must be a positive number of steps."""
    for name, steps in intervals.items():
        if steps is not None and steps < 1:
            raise ValueError(f"{name} must be a positive number of steps, got {steps}")
