"""TensorBoard logging for a lockstep run: two runs that overlay, how far apart they are, and the verdict.

A run folder holds three runs (event streams):

- ``hand/`` and ``autograd/``: the same tags for the torchbp model and its
  native twin, so TensorBoard draws the two curves on one chart; ``hand/``
  also carries what is measured of the torchbp model against its twin (the
  errors), the verdict as a text card, and the HParams tab's row;
- ``tolerance/``: the limit of the check, 1, on each ``match`` chart, so that
  chart's scale runs from 0 (bit for bit) to the limit whatever the errors are.

Tags are grouped by quantity, then by the run's ``name`` (an experiment's):
``loss/seed``, ``match/seed``, ``metrics/digits/held_out_accuracy``.
TensorBoard makes one section per group, in alphabetical order, and one chart
per tag, on which exactly the runs that wrote that tag overlay: ``loss`` first
(hand and autograd), then ``match`` (the largest error of each checked step as
a fraction of its tolerance, under the tolerance line), ``metrics``,
``per_sample``, ``raw_error`` (the errors in their own units) and ``summary``
(one value per run, the HParams tab's columns).

TensorBoard draws zigzag curves from a folder written twice, so a log only
ever opens a folder that holds no event files, and :func:`new_run_dir` makes
a fresh one for every invocation.

Scalars are written as float32 tensors with the scalars plugin's metadata, the
form tensorboard's own summaries take, whose first event per tag carries the
chart's description (TensorBoard's default data server drops the description
of an old-style ``simple_value``, and float64 scalars altogether). A step's
scalars are held in memory and written together, one event per run and step,
at least every ``flush_secs`` seconds and on :meth:`TensorBoardLog.flush` and
:meth:`TensorBoardLog.close`: a TensorBoard call per scalar would cost more
than a small network's training step. A run that is killed leaves readable
files with all but its last moments.
"""

from __future__ import annotations

import datetime
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.scalar.metadata import create_summary_metadata as scalar_metadata
from tensorboard.plugins.text.summary_v2 import text_pb
from torch.utils.tensorboard import SummaryWriter

from torchbp.speed.events import file_writer, write_scalars

SIDES = ("hand", "autograd")
LIMIT = "tolerance"  # the run that draws the check's limit on the match charts
QUEUE = 1000  # events a writer thread may hold: handing over 2 s of steps does not wait on the disk


def new_run_dir(logdir: str | Path, experiment: str) -> Path:
    """Create and return a fresh folder ``logdir/experiment/<run-id>``.

    The run id is the local time to the second, unique in ``logdir``: one that
    another experiment's folder there already has, or a second invocation within
    the same second, gets ``-2``, ``-3``, ... (the HParams tab names each run by
    its id alone, and merges runs of one name into one row). Creation is atomic
    (mkdir fails on an existing folder), so two invocations never share a folder.
    Raises OSError when the folder cannot be created.
    """
    parent = Path(logdir) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        run_id = stamp if attempt == 1 else f"{stamp}-{attempt}"
        if any((other / run_id).exists() for other in Path(logdir).iterdir() if other != parent):
            continue
        try:
            (parent / run_id).mkdir()
        except FileExistsError:
            continue
        return parent / run_id
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
        "How far apart the two models are at each checked step: the largest error of the step's compared tensors "
        "(the loss and every gradient), each as a fraction of its tolerance (atol + rtol · max |reference|). "
        "0 is bit for bit; 1, the line of the run tolerance, is the limit of the check; above it the step fails. "
        "Rounding differences lie far below the line. raw_error has the same errors in their own units."
    ),
    "raw_error": (
        "The errors in their own units (the match charts show them against the limit): abs_loss_difference is "
        "|loss(hand) − loss(autograd)|, max_grad_error the largest gradient error relative to the gradient's "
        "largest magnitude; 0 means bit for bit. Differences of rounding are of the size of the dtype's rounding "
        "step (about 1e-16 in float64, 1e-7 in float32), and the chart scales itself to them."
    ),
    "summary": (
        "One value per run, at its last step: the columns of the HParams tab. final_loss is the torchbp model's "
        "last loss, error_over_tolerance the largest of the match chart over the run, metric the value of the "
        "metric the settings column metric names."
    ),
}
# The HParams tab's metric columns: the tag summary/<key> of each, and its heading.
SUMMARY = {"final_loss": "final loss", "error_over_tolerance": "error / tolerance", "metric": "metric"}
SHOWN = 5  # settings the HParams tab shows at first: TensorBoard's own count


def declared_columns(settings: list[str]) -> Summary:
    """The HParams tab's columns, declared: the ``settings`` (the first ``SHOWN`` marked as differing between
    runs, which TensorBoard shows at first) and the ``SUMMARY`` metrics; as tensorboard's hparams_config_pb
    writes it, with each setting's ``differs`` set. Declared, every run in a log folder shares the same few
    columns; otherwise TensorBoard would make one of every chart of every run."""
    experiment = api_pb2.Experiment(
        hparam_infos=[
            api_pb2.HParamInfo(name=key, type=api_pb2.DATA_TYPE_STRING, differs=index < SHOWN)
            for index, key in enumerate(settings)
        ],
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"summary/{key}"), display_name=heading)
            for key, heading in SUMMARY.items()
        ],
        time_created_secs=time.time(),
    )
    declaration = Summary()
    declaration.value.add(
        tag=metadata.EXPERIMENT_TAG,
        metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        tensor=metadata.NULL_TENSOR,
    )
    return declaration


class TensorBoardLog:
    """Writers for one lockstep run; see the module docstring for the layout and how scalars are written."""

    def __init__(self, run_dir: str | Path, name: str | None = None, flush_secs: int = 2):
        self.run_dir, self.name = Path(run_dir), name
        if event_files(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds TensorBoard event files; writing into it again "
                "would make TensorBoard draw zigzag curves. Use torchbp.new_run_dir() for a fresh folder."
            )
        self.flush_secs = flush_secs
        self.writers: dict[str, SummaryWriter] = {}  # run: its writer, made when the run first gets an event
        self.pending: dict[str, list[tuple[int, float, str, float]]] = {run: [] for run in (*SIDES, LIMIT)}
        self.described: set[tuple[str, str]] = set()  # (run, tag) whose first event carried its description
        self.next_write = time.monotonic() + flush_secs
        self.loss_tag, self.match_tag = self.tag("loss"), self.tag("match")
        self.max_grad_error_tag = self.tag("raw_error", "max_grad_error")
        self.abs_loss_difference_tag = self.tag("raw_error", "abs_loss_difference")
        for side in SIDES:  # both runs from the start, so a run that is stopped early still shows both
            self.writer(side)

    def writer(self, run: str) -> SummaryWriter:
        """The writer of ``run`` ("hand", "autograd" or "tolerance"), made on first use."""
        if run not in self.writers:
            self.writers[run] = SummaryWriter(self.run_dir / run, flush_secs=self.flush_secs, max_queue=QUEUE)
        return self.writers[run]

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
        error_over_tolerance: float | None = None,
    ) -> None:
        """One lockstep step: both losses; on a checked step, how far apart the two models are
        (None where the step was not checked): the largest error as a fraction of its tolerance under the
        tolerance line, and the raw errors; where the step recorded them, the per-sample gradient
        norms. What :meth:`scalar` does for one value, done at once: this runs at every step of a small network."""
        now = time.time()
        hand = self.pending["hand"]
        hand.append((step, now, self.loss_tag, hand_loss))
        self.pending["autograd"].append((step, now, self.loss_tag, autograd_loss))
        checked = (
            (self.match_tag, error_over_tolerance),
            (self.abs_loss_difference_tag, abs_loss_difference),
            (self.max_grad_error_tag, max_grad_error),
        )
        hand.extend((step, now, tag, value) for tag, value in checked if value is not None)
        if error_over_tolerance is not None:
            self.pending[LIMIT].append((step, now, self.match_tag, 1.0))
        if grad_norms is not None:
            self.histogram("hand", self.tag("per_sample", "grad_norm"), grad_norms, step)
        if time.monotonic() >= self.next_write:
            self.flush()

    def scalar(self, run: str, tag: str, value: float, step: int) -> None:
        """``tag`` at ``step`` in ``run`` ("hand", "autograd" or "tolerance")."""
        self.pending[run].append((step, time.time(), tag, float(value)))
        if time.monotonic() >= self.next_write:
            self.flush()

    def metric(self, quantity: str, hand: float, autograd: float, step: int) -> None:
        """A metric of both models, under one tag in both runs, so TensorBoard overlays the two curves."""
        tag = self.tag("metrics", quantity)
        self.scalar("hand", tag, hand, step)
        self.scalar("autograd", tag, autograd, step)

    def raw_error(self, quantity: str, value: float, step: int) -> None:
        """An error of the torchbp model in its own units (``raw_error/<name>/<quantity>``, run hand)."""
        self.scalar("hand", self.tag("raw_error", quantity), value, step)

    def image(self, side: str, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self._write_pending()  # events reach the files in the order they were logged
        self.writer(side).add_image(tag, image_hwc, step, dataformats="HWC")

    def histogram(self, side: str, tag: str, values: torch.Tensor, step: int) -> None:
        self._write_pending()
        self.writer(side).add_histogram(tag, values.detach().float().cpu(), step)

    def text(self, quantity: str, markdown: str, step: int = 0) -> None:
        """A text card (TensorBoard's Text tab) in the run hand."""
        self._write_pending()
        file_writer(self.writer("hand")).add_summary(text_pb(self.tag(quantity), markdown), step)

    def hparams(
        self, hparams: dict[str, object], summary: dict[str, float | None] | None = None, step: int = 0
    ) -> None:
        """The run's row of TensorBoard's HParams tab, in the ``hand`` run: its settings ``hparams``, written as
        text (``32``, ``0.5``: never a number in one run and a word in another), under the columns of
        :func:`declared_columns`, and its ``summary`` values (keys of ``SUMMARY``; None: left empty) as
        ``summary/<key>`` at ``step``. The trial is named after the run folder, not a hash."""
        columns = {key: float(value) for key, value in (summary or {}).items() if value is not None}
        self.pending["hand"].extend((step, time.time(), f"summary/{key}", value) for key, value in columns.items())
        self._write_pending()
        settings = {key: str(value) for key, value in hparams.items()}
        writer = file_writer(self.writer("hand"))
        writer.add_summary(declared_columns(list(settings)))
        writer.add_summary(hparams_pb(settings, trial_id=self.run_dir.name))

    def _write_pending(self) -> None:
        """The held scalars as events, one per run and step, each carrying that step's tags
        (by :func:`torchbp.speed.events.write_scalars`, which saves a small network's step a tenth of its time)."""
        for run, pending in self.pending.items():
            if pending:
                write_scalars(self.writer(run), pending, partial(self._metadata, run))
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

    def close(
        self,
        verdict: str | None = None,
        step: int = 0,
        hparams: dict[str, object] | None = None,
        summary: dict[str, float | None] | None = None,
    ) -> None:
        """Write the held scalars, the run's ``verdict`` as a text card at ``step`` and its HParams row
        (``hparams`` and ``summary``, see :meth:`hparams`) where given, and close the files."""
        if verdict is not None:
            self.text("verdict", verdict, step)
        if hparams is not None:
            self.hparams(hparams, summary, step)
        self._write_pending()
        for writer in self.writers.values():
            writer.close()
