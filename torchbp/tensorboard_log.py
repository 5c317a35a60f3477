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
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

SIDES = ("hand", "autograd")


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
    Events reach the disk at least every ``flush_secs`` seconds, so a run that is
    killed leaves readable files with all but its last moments.
    """

    def __init__(self, run_dir: str | Path, flush_secs: int = 2):
        self.run_dir = Path(run_dir)
        if event_files(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds TensorBoard event files; writing into it again "
                "would make TensorBoard draw zigzag curves. Use torchbp.new_run_dir() for a fresh folder."
            )
        self.pair = SummaryWriter(self.run_dir, flush_secs=flush_secs)
        self.sides = {side: SummaryWriter(self.run_dir / side, flush_secs=flush_secs) for side in SIDES}

    def both(self, tag: str, hand: float, autograd: float, step: int) -> None:
        """One tag in both runs, so TensorBoard overlays the two curves."""
        self.sides["hand"].add_scalar(tag, float(hand), step)
        self.sides["autograd"].add_scalar(tag, float(autograd), step)

    def difference(self, tag: str, value: float, step: int) -> None:
        self.pair.add_scalar(f"check/{tag}", float(value), step)

    def image(self, side: str, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self.sides[side].add_image(tag, image_hwc, step, dataformats="HWC")

    def histogram(self, side: str, tag: str, values: torch.Tensor, step: int) -> None:
        self.sides[side].add_histogram(tag, values.detach().float().cpu(), step)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """Hyperparameters and final metrics, in the run folder itself (run_name ".")."""
        metrics = {f"hparam/{name}": float(value) for name, value in metrics.items()}
        self.pair.add_hparams(hparams, metrics, run_name=".")

    def flush(self) -> None:
        for writer in (self.pair, *self.sides.values()):
            writer.flush()

    def close(self) -> None:
        for writer in (self.pair, *self.sides.values()):
            writer.close()
