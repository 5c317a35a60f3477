"""python -m experiments.derivation.figures [--out docs]: the figures of docs/derivation.md, as PNG files.

Needs matplotlib (``pip install matplotlib``, or the ``figures`` extra). Each drawing function returns its
matplotlib Figure and a text of the numbers it shows; the text goes into the PNG's Description, where
tests/test_derivation_doc.py compares a committed figure with what the script draws now.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
from pathlib import Path

import numpy as np

from experiments.derivation import chapter_figures
from experiments.derivation.example import matrix
from experiments.derivation.explain import three_ways
from experiments.lab.registry import EXPERIMENTS
from torchbp.lockstep import LockstepTrainer


def network_diagram(plt):
    """The 2-3-1 network: nodes by layer, every weight an edge, the shapes beside."""
    figure, axes = plt.subplots(figsize=(8, 4))
    spacing = 4.0  # between layers: wide enough for each layer's label to sit under it alone
    layers = [
        ("input", "x", 2, "5×2"),
        ("hidden", "z1, a1 = σ(z1)", 3, "5×3 each"),
        ("output", "z2, ŷ = σ(z2)", 1, "5×1 each"),
    ]
    positions = []
    for column, (_, _, count, _) in enumerate(layers):
        ys = np.linspace(-(count - 1) / 2, (count - 1) / 2, count)
        positions.append([(column * spacing, y) for y in ys])
    for left, right, label in ((positions[0], positions[1], "W1: 3×2"), (positions[1], positions[2], "W2: 1×3")):
        for x0, y0 in left:
            for x1, y1 in right:
                axes.plot([x0, x1], [y0, y1], color="0.6", linewidth=1, zorder=1)
        axes.text((left[0][0] + right[0][0]) / 2, 1.55, label, ha="center", fontsize=11)
    for (role, tensors, _, shape), nodes in zip(layers, positions):
        for x, y in nodes:
            axes.add_patch(plt.Circle((x, y), 0.28, color="#4C72B0", zorder=2))
        axes.text(
            nodes[0][0], -2.9, f"{role}\n{tensors}\n{shape}", ha="center", va="baseline", fontsize=10, linespacing=1.5
        )
    output_x = positions[2][0][0]
    axes.annotate("", xy=(output_x + 1.2, 0), xytext=(output_x + 0.35, 0), arrowprops=dict(arrowstyle="->"))
    axes.text(output_x + 1.3, 0, "J = ½ Σ (y − ŷ)²\ntargets y: 5×1", va="center", fontsize=11, linespacing=1.5)
    axes.set_xlim(-1, output_x + 4.5)
    axes.set_ylim(-3.1, 2)
    axes.set_aspect("equal")
    axes.axis("off")
    return figure, "\n".join(f"{role}: {tensors}, {shape}" for role, tensors, _, shape in layers)


@functools.cache
def seed_losses() -> dict[str, np.ndarray]:
    """The seed experiment with its defaults, both models free-running (each on its own gradients, so
    coinciding curves mean agreeing gradients all along): J before each step, step 0 first."""
    experiment = EXPERIMENTS["seed"]
    setup = experiment.build(experiment.defaults)
    trainer = LockstepTrainer(setup.model, setup.loss_fn, lr=experiment.defaults.lr, free_running=True)
    hand, autograd = [], []
    trainer.train(
        setup.batches,
        experiment.defaults.steps,
        on_step=lambda r: (hand.append(r.hand_loss), autograd.append(r.autograd_loss)),
    )
    return dict(hand=np.array(hand), autograd=np.array(autograd))


MARKED_STEPS = (0, 1, 30, 300)  # chapter 3's J, chapter 8's J after the step, the end of the quick drop, the slow part


def seed_loss_curve(plt):
    """Both curves on one chart, the step axis logarithmic beyond step 1 so that the first 30 steps show."""
    losses = seed_losses()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(losses["hand"], label="torchbp (hand-derived)", linewidth=3, alpha=0.5)
    axes.plot(losses["autograd"], label="native autograd", linewidth=1, linestyle="--")
    for step in MARKED_STEPS:
        axes.plot(step, losses["hand"][step], "o", color="black", markersize=3)
        label = f"{losses['hand'][step]:.6f}"
        axes.annotate(label, (step, losses["hand"][step]), xytext=(4, 4), textcoords="offset points", fontsize=8)
    axes.set_xscale("symlog", linthresh=1, linscale=0.5)
    axes.set_xlim(0, len(losses["hand"]))
    axes.set_xlabel("gradient-descent step (logarithmic beyond 1)")
    axes.set_ylabel("J = ½ Σ (y − ŷ)²")
    axes.set_title("seed experiment: the two curves coincide")
    axes.legend()
    last = len(losses["hand"]) - 1
    marked = "\n".join(f"step {step}: J = {losses['hand'][step]:.6f}" for step in (*MARKED_STEPS, last))
    return figure, f"{marked}\ncurves coincide: {bool((losses['hand'] == losses['autograd']).all())}"


def per_sample_heat_map(plt):
    """δ2,n a1,nᵀ for the five samples and their sum, ∂J/∂W2, at the initial weights."""
    per_sample = three_ways()["values"]["per_sample_dJ_dW2"][:, 0, :]
    rows = np.vstack([per_sample, per_sample.sum(0, keepdims=True)])
    scale = np.abs(rows).max()
    figure, axes = plt.subplots(figsize=(6, 4))
    image = axes.imshow(rows, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
    for (i, j), value in np.ndenumerate(rows):
        color = "white" if abs(value) > 0.6 * scale else "black"
        axes.text(j, i, f"{value:+.4f}", ha="center", va="center", fontsize=9, color=color)
    axes.axhline(len(per_sample) - 0.5, color="black", linewidth=1.5)
    axes.set_xticks(range(3), ["W2[0, 0]", "W2[0, 1]", "W2[0, 2]"])
    axes.set_yticks(range(len(rows)), [f"sample {n + 1}" for n in range(len(per_sample))] + ["sum = ∂J/∂W2"])
    axes.set_title("δ2,n a1,nᵀ: each sample's share of ∂J/∂W2")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure, matrix("δ2,n a1,nᵀ, and their sum", rows)


FIGURES = {
    "network.png": network_diagram,
    "seed_loss.png": seed_loss_curve,
    "per_sample_contributions.png": per_sample_heat_map,
    "cross_entropy_pulls.png": chapter_figures.cross_entropy_figure,
    "layer_norm_projection.png": chapter_figures.layer_norm_figure,
    "conv2d_scatter.png": chapter_figures.conv2d_figure,
}
DPI = 120
COLOURS = 256  # a palette keeps a third of the bytes and looks the same: the figures are flat colour


def save_png(figure, path: Path, shown: str) -> None:
    """The figure as a palette PNG, with ``shown``, the numbers it draws, as its Description."""
    from PIL import Image, PngImagePlugin  # matplotlib's own dependency

    drawn = io.BytesIO()
    figure.savefig(drawn, format="png", dpi=DPI, bbox_inches="tight")
    image = Image.open(drawn).convert("RGB")
    palette = image.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("Description", shown)
    palette.save(path, optimize=True, pnginfo=info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.derivation.figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="docs", help="folder for the PNG files (default docs)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "python -m experiments.derivation.figures: error: needs matplotlib (pip install matplotlib)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        figure, shown = draw(plt)
        save_png(figure, out / name, shown)
        plt.close(figure)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
