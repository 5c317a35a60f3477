"""Run one experiment through the lockstep trainer, and the summary table of several."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from experiments.lab.minibatches import Shards
from experiments.lab.registry import Config, Experiment
from torchbp.lockstep import LockstepMismatch, LockstepResult, LockstepTrainer
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

    @property
    def matched(self) -> bool:
        """Every checked step agreed, and there was at least one."""
        return self.mismatch is None and self.result.checks > 0


def run_experiment(
    experiment: Experiment, config: Config, logdir: str | Path | None, progress: bool, rank: int = 0, world: int = 1
) -> Outcome:
    """Train ``experiment`` in lockstep under ``config``, logging to a fresh folder under ``logdir``
    (None: no log, as on every process but the first under torchrun). With ``world`` processes,
    this one trains on its ``rank``-th shard of every batch."""
    setup = experiment.build(config)
    run_dir = new_run_dir(logdir, experiment.name) if logdir is not None else None
    batches = Shards(setup.batches, rank, world) if world > 1 else setup.batches
    trainer = LockstepTrainer(
        setup.model,
        setup.loss_fn,
        optimizer=setup.optimizer,
        lr=config.lr,
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
    finally:
        bar.close()
        try:
            if setup.finish is not None:
                setup.finish(trainer)
        finally:
            trainer.close(hparams={"experiment": experiment.name, **config.hparams()})
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
    """One row per experiment; MATCH when every checked step agreed."""
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
                str(result.steps),
                str(result.checks),
                _number(result.hand_loss),
                _number(result.autograd_loss),
                f"{result.max_loss_difference:.1e}",
                f"{result.max_grad_error:.1e}",
                metric,
                f"{result.seconds:.1f}s",
                f"{_share_checking_and_logging(result):.0%}",
                "MATCH" if outcome.matched else "MISMATCH",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += ["", "Compared:"] + [f"  {outcome.name}: {outcome.layers}" for outcome in outcomes]
    return "\n".join(lines)


def _share_checking_and_logging(result: LockstepResult) -> float:
    """The share of the steps' time spent comparing the two models and writing the log."""
    split = result.time_split
    total = sum(split.values())
    return (split["checking"] + split["logging"]) / total if total else 0.0


def _number(value: float) -> str:
    return f"{value:.6f}"
