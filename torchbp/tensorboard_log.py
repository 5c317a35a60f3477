"""TensorBoard logging for a lockstep run: two runs that overlay, and their differences.

A run folder holds three event streams:

- ``hand/`` and ``autograd/``: the same tags (``loss``, metrics) for the torchbp
  model and its native twin, so TensorBoard draws the two curves on one chart;
- the folder itself: what belongs to the pair, the differences between the
  two (``check/...``), and, in an event file of their own written at the end,
  the hyperparameters.

TensorBoard draws zigzag curves from a folder written twice, so a log only
ever opens a folder that holds no event files, and :func:`new_run_dir` makes
a fresh one for every invocation.
"""

from __future__ import annotations

import datetime
import time
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from torchbp.event_records import add_events, with_fast_checksums

if TYPE_CHECKING:
    from torchbp.lockstep import StepRecord

SIDES = ("hand", "autograd")
PAIR = "."  # the run folder itself: what belongs to the pair
QUEUE = 1000  # events a writer thread may hold: handing over 2 s of steps does not wait on the disk


def new_run_dir(logdir: str | Path, experiment: str) -> Path:
    """Create and return a fresh folder ``logdir/experiment/<run-id>``.

    The run id is the local time to the second; a second invocation within the
    same second gets ``-2``, ``-3``, ... Creation is atomic (mkdir fails on an
    existing folder), so two invocations never share a folder. Raises OSError
    when the folder cannot be created.
    """
    parent = Path(logdir) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        run_dir = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise FileExistsError(f"no free run folder for {stamp} under {parent}")


def event_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("**/events.out.tfevents.*"))


class TensorBoardLog:
    """Writers for one lockstep run; see the module docstring for the layout.

    Scalars are written as float32 ``simple_value``s, the form every TensorBoard
    reader keeps (float64 tensor scalars are dropped by its default data server).
    A step's scalars are held in memory and written together, one event per run
    and step, at least every ``flush_secs`` seconds and on :meth:`flush` and
    :meth:`close`: a TensorBoard call per scalar would cost more than a small
    network's training step. A run that is killed leaves readable files with
    all but its last moments.
    """

    def __init__(self, run_dir: str | Path, flush_secs: int = 2):
        self.run_dir = Path(run_dir)
        if event_files(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds TensorBoard event files; writing into it again "
                "would make TensorBoard draw zigzag curves. Use torchbp.new_run_dir() for a fresh folder."
            )
        self.flush_secs = flush_secs
        self.writers = {
            run: with_fast_checksums(SummaryWriter(self.run_dir / run, flush_secs=flush_secs, max_queue=QUEUE))
            for run in (PAIR, *SIDES)
        }
        self.pending: dict[str, list[tuple[int, float, str, float]]] = {run: [] for run in self.writers}
        self.next_write = time.monotonic() + flush_secs

    def step(self, record: StepRecord) -> None:
        """What one lockstep step measured: both losses; on a checked step the differences;
        on a step that recorded them, the per-sample gradient norms."""
        now, step = time.time(), record.step
        self.pending["hand"].append((step, now, "loss", record.hand_loss))
        self.pending["autograd"].append((step, now, "loss", record.autograd_loss))
        if record.report is not None:
            self.pending[PAIR].append((step, now, "check/abs_loss_difference", record.loss_difference))
            self.pending[PAIR].append((step, now, "check/max_grad_error", record.max_grad_error))
        if record.per_sample is not None:
            self.histogram("hand", "per_sample/grad_norm", record.per_sample.grad_norms(), record.step)
        if time.monotonic() >= self.next_write:
            self.flush()

    def scalar(self, run: str, tag: str, value: float, step: int) -> None:
        """``tag`` at ``step`` in ``run`` ("hand", "autograd", or PAIR for the run folder itself)."""
        self.pending[run].append((step, time.time(), tag, float(value)))
        if time.monotonic() >= self.next_write:
            self.flush()

    def both(self, tag: str, hand: float, autograd: float, step: int) -> None:
        """One tag in both runs, so TensorBoard overlays the two curves."""
        self.scalar("hand", tag, hand, step)
        self.scalar("autograd", tag, autograd, step)

    def difference(self, tag: str, value: float, step: int) -> None:
        self.scalar(PAIR, f"check/{tag}", value, step)

    def image(self, side: str, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self._write_pending()  # events reach the files in the order they were logged
        self.writers[side].add_image(tag, image_hwc, step, dataformats="HWC")

    def histogram(self, side: str, tag: str, values: torch.Tensor, step: int) -> None:
        self._write_pending()
        self.writers[side].add_histogram(tag, values.detach().float().cpu(), step)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """Hyperparameters and final metrics, in the run folder itself (run_name ".")."""
        self._write_pending()
        metrics = {f"hparam/{name}": float(value) for name, value in metrics.items()}
        self.writers[PAIR].add_hparams(hparams, metrics, run_name=".")

    def _write_pending(self) -> None:
        """The held scalars as events, one per run and step, each carrying that step's tags."""
        for run, pending in self.pending.items():
            if not pending:
                continue
            events = []
            for step, group in groupby(pending, key=itemgetter(0)):
                group = list(group)
                summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for _, _, tag, value in group])
                events.append(Event(step=step, wall_time=group[0][1], summary=summary))
            add_events(self.writers[run], events)
            pending.clear()

    def flush(self) -> None:
        self._write_pending()
        for writer in self.writers.values():
            writer.flush()
        self.next_write = time.monotonic() + self.flush_secs

    def close(self) -> None:
        self._write_pending()
        for writer in self.writers.values():
            writer.close()
