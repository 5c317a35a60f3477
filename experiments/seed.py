"""The derivation's network: 2 inputs, 3 sigmoid hidden units, 1 sigmoid output, no biases.

Five fixed training samples, the cost J = ½ Σ (y − ŷ)², full-batch gradient
descent, float64. Beside the loss curves it logs how each sample contributes
to the second layer's weight gradient,

    ∂J/∂W2 = Σ_n δ2,n a1,nᵀ        (each term 1×3, W2's shape in torch's (out, in) convention)

as heat maps (see :class:`ContributionHeatMaps`): one row per sample and a last
row with their sum, which is the full gradient (checked at every recorded
step). The terms come from torchbp.PerSampleGradients, recorded during the
training step's own backward, and from torchbp.per_sample_grads at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

import torchbp
from experiments.lab.minibatches import Minibatches
from experiments.lab.models import sigmoid_mlp
from experiments.lab.registry import Config, Setup, experiment
from torchbp.lockstep import LockstepTrainer, StepRecord

SAMPLES = 5
HEAT_MAP = ("per_sample", "W2_gradient_contributions")  # tag per_sample/seed/W2_gradient_contributions


class HalfSumSquaredError(torch.nn.Module):
    """J = ½ Σ (y − ŷ)², whose gradient with respect to ŷ is ŷ − y."""

    reduction = "sum"  # a sum over samples: per-sample gradients add up to the full gradient

    def __init__(self):
        super().__init__()
        self.sum_squared_error = torch.nn.MSELoss(reduction="sum")

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.sum_squared_error(y_hat, y)


def network(config: Config) -> torch.nn.Sequential:
    """The derivation's 2-3-1 sigmoid network, without biases."""
    return sigmoid_mlp((2, 3, 1), config, bias=False)


def samples(seed: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Five inputs in [0, 1]² and five targets in [0, 1], fixed by the seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(SAMPLES, 2, generator=generator, dtype=torch.float64)
    y = torch.rand(SAMPLES, 1, generator=generator, dtype=torch.float64)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


def common_scale(contributions: Iterable[np.ndarray]) -> float:
    """The largest |value| over all the arrays: the colour scale −scale … +scale clips none of them."""
    return max((float(np.abs(rows).max()) for rows in contributions), default=0.0) or 1.0


# TensorBoard's Time Series tab (2.21) fits an image into a box 215 px high, 286 px wide on its narrowest
# cards, and scales it nearest-neighbour ("pixelated"): an image of this size shows pixel for pixel on
# every card, its text as large and as sharp as drawn, with no need for "Show actual image size".
HEAT_MAP_PIXELS = (280, 215)  # width, height
HEAT_MAP_DPI = 100
HEAT_MAP_FONT = 9.5  # points: 13.2 px, its digits 9.6 px tall


def display_exponent(scale: float) -> int:
    """k with 10ᵏ ≤ scale < 10ᵏ⁺¹: the cells print value / 10ᵏ with two decimals, −9.99 at the widest."""
    return math.floor(math.log10(scale))


def minus_signs(number: str) -> str:
    return number.replace("-", "−")  # the minus sign, as wide as the plus sign


def superscript(exponent: int) -> str:
    return str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def heat_map_figure(rows: np.ndarray, scale: float, step: int):
    """The samples' terms δ2,n a1,nᵀ and, below a line, their sum, as a matplotlib Figure.

    Diverging colours from −scale (blue) through white at zero to +scale (red), every
    cell's value printed in units of 10ᵏ (:func:`display_exponent`), as the title says.
    HEAT_MAP_PIXELS in size, so TensorBoard shows it unscaled. The Figure has its own
    Agg canvas, outside pyplot: nothing global.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    samples, units = rows.shape[0] - 1, rows.shape[1]
    exponent = display_exponent(scale)
    unit = 10.0**exponent
    width, height = HEAT_MAP_PIXELS
    margin = 2 / HEAT_MAP_DPI  # inches
    figure = Figure(
        figsize=(width / HEAT_MAP_DPI, height / HEAT_MAP_DPI),
        dpi=HEAT_MAP_DPI,
        layout=ConstrainedLayoutEngine(w_pad=margin, h_pad=margin),
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(rows, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
    for (i, j), value in np.ndenumerate(rows):
        color = "white" if abs(value) > 0.6 * scale else "black"
        text = minus_signs(f"{value / unit:+.2f}")
        axes.text(j, i, text, ha="center", va="center", fontsize=HEAT_MAP_FONT, color=color)
    axes.axhline(samples - 0.5, color="black", linewidth=2)  # the sum apart from its terms
    axes.set_xticks(range(units), [str(j + 1) for j in range(units)])
    axes.set_yticks(range(samples + 1), [f"sample {n + 1}" for n in range(samples)] + ["Σ = ∂J/∂W2"])
    axes.tick_params(labelsize=HEAT_MAP_FONT, length=0, pad=2)
    axes.set_xlabel("hidden unit j", fontsize=HEAT_MAP_FONT, labelpad=1)
    in_units = f" in units of 10{superscript(exponent)}" if exponent else ""
    figure.suptitle(f"step {step}: δ2,n a1,nᵀ{in_units}", fontsize=HEAT_MAP_FONT)  # wider than the axes
    bar = figure.colorbar(image, ax=axes, pad=0.03, fraction=0.1, aspect=15)  # one scale for the whole run
    bar.locator = MaxNLocator(4, symmetric=True)
    bar.formatter = FuncFormatter(lambda value, _: minus_signs(f"{value / unit:+g}") if value else "0")
    bar.update_ticks()
    bar.ax.tick_params(labelsize=HEAT_MAP_FONT, pad=2)
    return figure


def heat_map(rows: np.ndarray, scale: float, step: int) -> np.ndarray:
    """:func:`heat_map_figure` as an (H, W, 3) uint8 image, for TensorBoardLog.image."""
    figure = heat_map_figure(rows, scale, step)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def with_sum(per_sample: torch.Tensor) -> np.ndarray:
    """(N, 1, 3) W2-shaped terms -> (N + 1, 3): one row per sample, then their sum."""
    terms = per_sample[:, 0, :]
    return torch.cat([terms, terms.sum(0, keepdim=True)]).cpu().numpy()


class ContributionHeatMaps:
    """δ2,n a1,nᵀ at every step that records per-sample gradients and at the final parameters,
    drawn on ONE colour scale for the whole run (:func:`common_scale`), so the images compare
    across steps.

    That scale is known only once training ends, so the steps' contributions (6×3 each)
    are kept and the images drawn by :meth:`finish`, which the runner calls however the run
    ends (done, mismatch, Ctrl-C, SIGTERM), before the log closes; a run killed by SIGKILL
    has none.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.rows: dict[int, np.ndarray] = {}  # step: with_sum(terms)
        self.updates = 0  # steps completed; a step that fails its check updates nothing

    def watch(self, trainer: LockstepTrainer) -> Callable[[StepRecord], None]:
        def after_step(record: StepRecord) -> None:
            self.updates = record.step + 1
            if record.per_sample is None or trainer.log is None:
                return
            per_sample = record.per_sample.grads()["2.weight"]  # (5, 1, 3): one W2-shaped term per sample
            error = (per_sample.sum(0) - trainer.hand_model[2].weight.grad).abs().max().item()
            trainer.log.raw_error("per_sample_sum_error", error, record.step)
            self.rows[record.step] = with_sum(per_sample)

        return after_step

    def finish(self, trainer: LockstepTrainer) -> None:
        """Add the final parameters' contributions, at the step that would take its loss there, then log every image."""
        if trainer.log is None:
            return
        final = torchbp.per_sample_grads(trainer.hand_model, trainer.hand_loss_fn, self.x, self.y)["2.weight"]
        self.rows[self.updates] = with_sum(final)
        scale = common_scale(self.rows.values())
        for step, rows in sorted(self.rows.items()):
            trainer.log.image("hand", trainer.log.tag(*HEAT_MAP), heat_map(rows, scale, step), step)


@experiment(
    "seed",
    "the derivation's 2-3-1 sigmoid network, 5 samples, ½ SSE, per-sample contributions to ∂J/∂W2",
    full_batch=True,
    steps=2000,
    lr=0.5,
    batch_size=None,
    dtype="float64",
)
def build(config: Config) -> Setup:
    x, y = samples(config.seed, config.torch_dtype, config.device)
    heat_maps = ContributionHeatMaps(x, y)
    return Setup(
        model=network(config),
        loss_fn=HalfSumSquaredError(),
        batches=Minibatches(x, y, batch_size=None),
        per_sample_every=max(config.steps // 4, 1),
        watch=heat_maps.watch,
        finish=heat_maps.finish,
    )
