"""TensorBoard logging for a lockstep run: two runs that overlay, their differences, and the verdict.

A run folder holds three event streams:

- ``hand/`` and ``autograd/``: the same tags for the torchbp model and its
  native twin, so TensorBoard draws the two curves on one chart;
- the folder itself: what belongs to the pair: how far apart the two are
  (``match/...``), the verdict as a text card, and the hyperparameters.

Tags are grouped by quantity, then by the run's ``name`` (an experiment's):
``loss/seed``, ``match/seed/max_grad_error``, ``metrics/digits/held_out_accuracy``.
TensorBoard makes one section per group, in alphabetical order, and one chart
per tag, on which exactly the runs that wrote that tag overlay: the ``loss``
section comes first, with one chart per experiment showing its hand and
autograd curves, and the ``match`` charts follow.

TensorBoard draws zigzag curves from a folder written twice, so a log only
ever opens a folder that holds no event files, and :func:`new_run_dir` makes
a fresh one for every invocation.
"""

from __future__ import annotations

import datetime
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.scalar.metadata import create_summary_metadata as scalar_metadata
from tensorboard.plugins.text.summary_v2 import text_pb
from torch.utils.tensorboard import SummaryWriter

from torchbp.speed.events import file_writer, write_scalars

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


DESCRIPTIONS = {
    "loss": (
        "The loss of the torchbp model (run hand) and of its native twin (run autograd). Where the hand-derived "
        "backward agrees with autograd the two curves coincide, so one visible line is the expected picture; "
        "switch a run off in the run list to see the other. The match charts and the verdict (Text tab) give the "
        "figures."
    ),
    "metrics": "The same metric on both models (runs hand and autograd); coinciding curves are the expected picture.",
    "match": (
        "How far apart the two models are at each checked step: abs_loss_difference is |loss(hand) − loss(autograd)|, "
        "max_grad_error the largest gradient error relative to the gradient's largest magnitude. 0 means bit for bit."
    ),
}


class TensorBoardLog:
    """Writers for one lockstep run; see the module docstring for the layout.

    Scalars are written as float32 tensors with the scalars plugin's metadata, the
    form tensorboard's own summaries take, whose first event per tag carries the
    chart's description (TensorBoard's default data server drops the description
    of an old-style ``simple_value``, and float64 scalars altogether).
    A step's scalars are held in memory and written together, one event per run
    and step, at least every ``flush_secs`` seconds and on :meth:`flush` and
    :meth:`close`: a TensorBoard call per scalar would cost more than a small
    network's training step. A run that is killed leaves readable files with
    all but its last moments.
    """

    def __init__(self, run_dir: str | Path, name: str | None = None, flush_secs: int = 2):
        self.run_dir, self.name = Path(run_dir), name
        if event_files(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds TensorBoard event files; writing into it again "
                "would make TensorBoard draw zigzag curves. Use torchbp.new_run_dir() for a fresh folder."
            )
        self.flush_secs = flush_secs
        self.writers = {
            run: SummaryWriter(self.run_dir / run, flush_secs=flush_secs, max_queue=QUEUE) for run in (PAIR, *SIDES)
        }
        self.pending: dict[str, list[tuple[int, float, str, float]]] = {run: [] for run in self.writers}
        self.described: set[tuple[str, str]] = set()  # (run, tag) whose first event carried its description
        self.next_write = time.monotonic() + flush_secs
        self.loss_tag, self.max_grad_error_tag = self.tag("loss"), self.tag("match", "max_grad_error")
        self.abs_loss_difference_tag = self.tag("match", "abs_loss_difference")

    def tag(self, group: str, quantity: str | None = None) -> str:
        """``group/name/quantity``, leaving out what is None: ``tag("loss")`` is ``loss/seed`` in a run named seed."""
        return "/".join(part for part in (group, self.name, quantity) if part is not None)

    def step(
        self,
        step: int,
        hand_loss: float,
        autograd_loss: float,
        abs_loss_difference: float | None = None,
        max_grad_error: float | None = None,
        grad_norms: torch.Tensor | None = None,
    ) -> None:
        """One lockstep step: both losses; on a checked step, how far apart the two models are
        (None where the step was not checked); where the step recorded them, the per-sample gradient
        norms. What :meth:`scalar` does for one value, done at once: this runs at every step of a small network."""
        now = time.time()
        self.pending["hand"].append((step, now, self.loss_tag, hand_loss))
        self.pending["autograd"].append((step, now, self.loss_tag, autograd_loss))
        differences = ((self.abs_loss_difference_tag, abs_loss_difference), (self.max_grad_error_tag, max_grad_error))
        for tag, value in differences:
            if value is not None:
                self.pending[PAIR].append((step, now, tag, value))
        if grad_norms is not None:
            self.histogram("hand", self.tag("per_sample", "grad_norm"), grad_norms, step)
        if time.monotonic() >= self.next_write:
            self.flush()

    def scalar(self, run: str, tag: str, value: float, step: int) -> None:
        """``tag`` at ``step`` in ``run`` ("hand", "autograd", or PAIR for the run folder itself)."""
        self.pending[run].append((step, time.time(), tag, float(value)))
        if time.monotonic() >= self.next_write:
            self.flush()

    def metric(self, quantity: str, hand: float, autograd: float, step: int) -> None:
        """A metric of both models, under one tag in both runs, so TensorBoard overlays the two curves."""
        tag = self.tag("metrics", quantity)
        self.scalar("hand", tag, hand, step)
        self.scalar("autograd", tag, autograd, step)

    def match(self, quantity: str, value: float, step: int) -> None:
        """How far apart the two models are, by some measure, in the run folder itself."""
        self.scalar(PAIR, self.tag("match", quantity), value, step)

    def image(self, side: str, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self._write_pending()  # events reach the files in the order they were logged
        self.writers[side].add_image(tag, image_hwc, step, dataformats="HWC")

    def histogram(self, side: str, tag: str, values: torch.Tensor, step: int) -> None:
        self._write_pending()
        self.writers[side].add_histogram(tag, values.detach().float().cpu(), step)

    def text(self, quantity: str, markdown: str, step: int = 0) -> None:
        """A text card (TensorBoard's Text tab) in the run folder itself."""
        self._write_pending()
        file_writer(self.writers[PAIR]).add_summary(text_pb(self.tag(quantity), markdown), step)

    def hparams(self, hparams: dict[str, object]) -> None:
        """The run's settings, for TensorBoard's HParams tab, in the ``hand`` run.

        Values are written as text (``32``, ``0.5``), so one setting never shows as a
        number in one run and a word in another. TensorBoard takes the metric columns
        from the charts of the run that holds the settings: there, the torchbp model's
        loss and metrics. No chart of its own is added. The trial is named after the
        run folder, not a hash.
        """
        self._write_pending()
        trial = "/".join(part for part in (self.name, self.run_dir.name) if part)
        summary = hparams_pb({key: str(value) for key, value in hparams.items()}, trial_id=trial)
        file_writer(self.writers["hand"]).add_summary(summary)

    def _write_pending(self) -> None:
        """The held scalars as events, one per run and step, each carrying that step's tags
        (by :func:`torchbp.speed.events.write_scalars`, which saves a small network's step a tenth of its time)."""
        for run, pending in self.pending.items():
            if pending:
                write_scalars(self.writers[run], pending, partial(self._metadata, run))
                pending.clear()

    def _metadata(self, run: str, tag: str) -> SummaryMetadata | None:
        """The scalars plugin's metadata with the chart's description, on the first event of a tag in a run
        (TensorBoard reads it from there)."""
        if (run, tag) in self.described:
            return None
        self.described.add((run, tag))
        return scalar_metadata(display_name=tag, description=DESCRIPTIONS.get(tag.split("/", 1)[0], ""))

    def flush(self) -> None:
        self._write_pending()
        for writer in self.writers.values():
            writer.flush()
        self.next_write = time.monotonic() + self.flush_secs

    def close(self, verdict: str | None = None, step: int = 0, hparams: dict[str, object] | None = None) -> None:
        """Write the held scalars, the run's ``verdict`` as a text card at ``step`` and its ``hparams``
        where given, and close the files."""
        if verdict is not None:
            self.text("verdict", verdict, step)
        if hparams is not None:
            self.hparams(hparams)
        self._write_pending()
        for writer in self.writers.values():
            writer.close()
