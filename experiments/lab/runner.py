"""Run one experiment through the lockstep trainer, and the summary table of several."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from experiments.lab.minibatches import Shards
from experiments.lab.registry import Config, Experiment, Setup
from torchbp.lockstep import LockstepMismatch, LockstepResult, LockstepTrainer
from torchbp.lockstep.result import what_stopped
from torchbp.tensorboard_log import new_run_dir


@dataclass
class Outcome:
    name: str
    result: LockstepResult
    headline_metric: str | None
    baseline_metric: str | None
    run_dir: Path | None
    layers: str = ""  # which layers are hand-derived, which native
    mismatch: LockstepMismatch | None = None
    stop: KeyboardInterrupt | SystemExit | None = None  # what ended the run early: Ctrl-C, SIGTERM's exit

    @property
    def matched(self) -> bool:
        """The run went its whole way, and every checked step agreed, and there was at least one."""
        return self.mismatch is None and self.stop is None and self.result.checks > 0


def run_experiment(
    experiment: Experiment, config: Config, logdir: str | Path | None, progress: bool, rank: int = 0, world: int = 1
) -> Outcome:
    """Train ``experiment`` in lockstep under ``config``, logging to a fresh folder under ``logdir``
    (None: no log, as on every process but the first under torchrun). With ``world`` processes,
    this one trains on its ``rank``-th shard of every batch.

    An interrupt (Ctrl-C) or an exit (SIGTERM's) ends the run early without going on up: the outcome
    holds it (``stop``) with the steps taken so far, for the caller to report and raise again. A run
    folder that holds no event file at the end (the run stopped or failed before its log began) is
    removed, and the outcome's ``run_dir`` is None."""
    run_dir = None
    try:
        setup = experiment.build(config)
        run_dir = new_run_dir(logdir, experiment.name) if logdir is not None else None
        outcome = _train_in_lockstep(experiment, config, setup, run_dir, progress, rank, world)
    except (KeyboardInterrupt, SystemExit) as stop:  # before training began: no step taken
        result = LockstepResult(steps_planned=config.steps, stopped_by=what_stopped(stop))
        outcome = Outcome(experiment.name, result, None, None, run_dir, stop=stop)
    except BaseException:
        kept_if_written(run_dir)
        raise
    outcome.run_dir = kept_if_written(outcome.run_dir)
    return outcome


def kept_if_written(run_dir: Path | None) -> Path | None:
    """``run_dir`` where it holds a TensorBoard event file; otherwise None, the folder removed (and its
    experiment's folder with it, where that is left empty), so that a run stopped before its log began
    leaves no empty folder behind."""
    if run_dir is None or any(run_dir.rglob("events.out.tfevents.*")):
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # another run's folder in it, or one being made: it stays
        run_dir.parent.rmdir()
    return None


def _train_in_lockstep(
    experiment: Experiment, config: Config, setup: Setup, run_dir: Path | None, progress: bool, rank: int, world: int
) -> Outcome:
    """``run_experiment``'s training, once the experiment is built and its run folder made."""
    batches = Shards(setup.batches, rank, world) if world > 1 else setup.batches
    trainer = LockstepTrainer(
        setup.model,
        setup.loss_fn,
        optimizer=experiment.optimizer.at(config.lr),
        check_every=config.check_every,
        free_running=config.free_running,
        log_dir=run_dir,
        log_name=experiment.name,
        metrics=setup.metrics,
        metric_every=setup.metric_every,
        per_sample_every=setup.per_sample_every,
    )
    after_step = setup.watch(trainer) if setup.watch else None
    bar = tqdm(total=config.steps, desc=experiment.name, unit="step", disable=not progress, leave=False)

    def on_step(record):
        if after_step is not None:
            after_step(record)
        bar.update()

    outcome = Outcome(
        experiment.name, trainer.result, setup.headline_metric, setup.baseline_metric, run_dir, trainer.layers
    )
    try:
        trainer.train(batches, config.steps, on_step=on_step)
    except LockstepMismatch as mismatch:
        outcome.mismatch = mismatch
    except (KeyboardInterrupt, SystemExit) as stop:  # the outcome is the steps taken so far
        outcome.stop = stop
    finally:
        bar.close()
        try:
            if setup.finish is not None:
                setup.finish(trainer)
        except (KeyboardInterrupt, SystemExit) as stop:  # in the run's last logging (seed draws its heat maps)
            outcome.stop = outcome.stop or stop
        finally:
            settings = config.hparams()
            defaults = experiment.defaults.hparams()
            changed = {key: value for key, value in settings.items() if value != defaults[key]}  # on the command line
            trainer.close({"experiment": experiment.name, **changed}, setup.headline_metric, settings)
    return outcome


SUMMARY_COLUMNS = (
    "experiment",
    "steps",
    "checks",
    "loss hand",
    "loss autograd",
    "max |Δloss|",
    "max grad err",
    "metric",
    "time",
    "check+log",
    "result",
)


def metric_text(name: str, metrics: dict[str, tuple[float, float]]) -> str:
    """The torchbp model's value of a metric: a loss as a number, anything else (an accuracy) as a share."""
    value = metrics[name][0]
    return f"{value:.3f}" if name.endswith("loss") else f"{value:.1%}"


def summary_table(outcomes: list[Outcome]) -> str:
    """One row per experiment; MATCH when every checked step agreed, STOPPED (with the steps taken of
    those planned) where an interrupt or SIGTERM ended the run early."""
    rows = [SUMMARY_COLUMNS]
    for outcome in outcomes:
        result = outcome.result
        metric = "-"
        if outcome.headline_metric in result.metrics:
            metric = f"{outcome.headline_metric} {metric_text(outcome.headline_metric, result.metrics)}"
            if outcome.baseline_metric in result.metrics:
                metric += f" ({outcome.baseline_metric} {metric_text(outcome.baseline_metric, result.metrics)})"
        rows.append(
            (
                outcome.name,
                _steps(outcome),
                str(result.checks),
                _number(result.hand_loss),
                _number(result.autograd_loss),
                f"{result.max_loss_difference:.1e}",
                f"{result.max_grad_error:.1e}",
                metric,
                f"{result.seconds:.1f}s",
                f"{_share_checking_and_logging(result):.0%}",
                _verdict(outcome),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    compared = [f"  {outcome.name}: {outcome.layers or 'nothing, stopped before it began'}" for outcome in outcomes]
    lines += ["", "Compared:", *compared]
    return "\n".join(lines)


def _steps(outcome: Outcome) -> str:
    """The steps taken; for a run stopped early, of how many planned."""
    planned = outcome.result.steps_planned
    if outcome.stop is None or planned is None:
        return str(outcome.result.steps)
    return f"{outcome.result.steps} of {planned}"


def _verdict(outcome: Outcome) -> str:
    if outcome.stop is not None:
        return "STOPPED"
    return "MATCH" if outcome.matched else "MISMATCH"


def _share_checking_and_logging(result: LockstepResult) -> float:
    """The share of the steps' time spent comparing the two models and writing the log."""
    split = result.time_split
    total = sum(split.values())
    return (split["checking"] + split["logging"]) / total if total else 0.0


def _number(value: float) -> str:
    return f"{value:.6f}"
