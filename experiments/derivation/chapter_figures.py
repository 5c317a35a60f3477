"""The figures of chapters 10–12 of docs/derivation.md, drawn from each chapter's own worked example.

Each figure has two functions: one returns the numbers it shows (tests/test_derivation_doc.py holds them
to the chapter's), the other draws them and returns the matplotlib Figure with a text of those numbers,
which ``python -m experiments.derivation.figures`` writes into the PNG beside the picture.
"""

from __future__ import annotations

import numpy as np

from experiments.derivation.chapters import conv2d, cross_entropy, layer_norm
from experiments.derivation.example import matrix

UP, DOWN, REMOVED, KEPT = "#2A9D3C", "#C44E52", "0.55", "#C44E52"


def minus_signs(text: str) -> str:
    return text.replace("-", "−")


SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def cross_entropy_pulls() -> dict[str, np.ndarray]:
    """Chapter 10's p and one-hot y, and y − p = −N δ: how far gradient descent pulls each logit, and which way."""
    v = cross_entropy.three_ways()["values"]
    return dict(p=v["p"], y=v["y"], target=np.array(cross_entropy.TARGET), loss=v["loss"], pull=v["y"] - v["p"])


def cross_entropy_figure(plt):
    """Per sample, p as bars over the target y; an arrow from each p_c to y_c: up by 1 − p_t, down by p_c."""
    shown = cross_entropy_pulls()
    p, y, target, pull = shown["p"], shown["y"], shown["target"], shown["pull"]
    samples, classes = p.shape
    figure, axes = plt.subplots(1, samples, figsize=(7.6, 3.4), sharey=True, layout="constrained")
    for n, axes_n in enumerate(axes):
        axes_n.bar(range(classes), y[n], width=0.6, fill=False, edgecolor="0.3", linestyle="--", label="y (one-hot t)")
        axes_n.bar(range(classes), p[n], width=0.6, color="#4C72B0", alpha=0.75, label="p = softmax(z)")
        for c in range(classes):
            up = c == target[n]
            colour = UP if up else DOWN
            arrow = dict(arrowstyle="-|>", color=colour, lw=2, shrinkA=0, shrinkB=0)
            axes_n.annotate("", xy=(c, y[n, c]), xytext=(c, p[n, c]), arrowprops=arrow)
            label = f"+{pull[n, c]:.3f} = 1 − pₜ" if up else f"−{p[n, c]:.3f} = −p{str(c).translate(SUBSCRIPT)}"
            axes_n.text(c, max(p[n, c], y[n, c]) + 0.02, label, color=colour, fontsize=8.5, ha="center")
        axes_n.set_xticks(range(classes), [f"class {c}" + (" = t" if c == target[n] else "") for c in range(classes)])
        axes_n.set_title(f"sample {n + 1}, t = {target[n]}: ℓ = {shown['loss'][n]:.3f}", fontsize=10)
    axes[0].set_ylabel("probability")
    axes[0].set_ylim(0, 1.12)
    axes[1].legend(loc="upper left", fontsize=8)
    figure.suptitle("arrows: y − p = −N δ, the way gradient descent moves each logit", fontsize=11)
    return figure, "\n\n".join(matrix(name, shown[name]) for name in ("p", "y", "pull"))


def layer_norm_projection() -> dict[str, np.ndarray]:
    """Chapter 11's ∂J/∂x̃ of each sample split into its parts along 1 and along x̃, which the backward
    removes, and the rest, ∂J/∂x / rstd, which it keeps: the terms through μ and rstd, divided by −rstd."""
    v = layer_norm.three_ways()["values"]
    return dict(
        dJ_dx_tilde=v["dJ_dx_tilde"],
        x_tilde=v["x_tilde"],
        along_one=np.broadcast_to(-v["through_mu"] / v["rstd"], v["x_tilde"].shape),  # mean_d(∂J/∂x̃) 1
        along_x_tilde=-v["through_rstd"] / v["rstd"],  # x̃ mean_d(∂J/∂x̃ ⊙ x̃)
        kept=v["dJ_dx"] / v["rstd"],
    )


def layer_norm_figure(plt):
    """Per sample, the plane of rows that sum to 0, seen along 1: ∂J/∂x̃'s part in it is the part along x̃,
    removed, plus the part orthogonal to x̃, kept; the part along 1 is removed too, and given as a number."""
    from matplotlib import patches

    shown = layer_norm_projection()
    figure, axes = plt.subplots(1, len(shown["x_tilde"]), figsize=(8, 3.9), layout="constrained")
    for n, axes_n in enumerate(axes):
        x_tilde = shown["x_tilde"][n]
        across = np.cross(np.ones(3), x_tilde)  # D = 3: the one direction orthogonal to 1 and x̃
        plane = np.stack([x_tilde / np.linalg.norm(x_tilde), across / np.linalg.norm(across)])  # (2, 3): rows ⟂ 1
        removed, kept = plane @ shown["along_x_tilde"][n], plane @ shown["kept"][n]
        arrows = [((0, 0), removed + kept, "#4C72B0"), ((0, 0), removed, REMOVED), (removed, removed + kept, KEPT)]
        reach = 1.3 * np.abs(removed + kept).max()
        views = [(axes_n, (-reach, reach), (-reach, reach))]
        if np.linalg.norm(kept) < 0.1 * reach:  # too short to see: a zoomed view around the tip
            zoom = axes_n.inset_axes([0.06, 0.06, 0.42, 0.42])
            half = 1.6 * np.linalg.norm(kept)
            views.append((zoom, (removed[0] - half, removed[0] + half), (removed[1] - half, removed[1] + half)))
        for view, x_limits, y_limits in views:
            view.axhline(0, color="0.85", linewidth=1, zorder=0), view.axvline(0, color="0.85", linewidth=1, zorder=0)
            for start, end, colour in arrows:  # patches, which the axes clip, as annotations are not
                view.add_patch(
                    patches.FancyArrowPatch(
                        start, end, arrowstyle="-|>", mutation_scale=14, color=colour, lw=2, shrinkA=0, shrinkB=0
                    )
                )
            view.set_xlim(*x_limits), view.set_ylim(*y_limits), view.set_aspect("equal")
            view.tick_params(labelsize=7)
        if len(views) > 1:
            zoom = views[1][0]
            zoom.set_xticks([]), zoom.set_yticks([])
            zoom.set_title(f"×{2 * reach / (2 * half):.0f}", fontsize=8, loc="left", y=0.82, x=0.04)
            axes_n.indicate_inset_zoom(zoom, edgecolor="0.4")
        axes_n.set_xlabel("along x̃", fontsize=9), axes_n.set_ylabel("along 1 × x̃", fontsize=9)
        along_one = shown["along_one"][n, 0] * np.sqrt(3)
        axes_n.set_title(
            minus_signs(
                f"sample {n + 1}: along x̃ {removed[0]:+.3f}, across {kept[1]:+.3f};\n"
                f"along 1 (out of the page) {along_one:+.3f}, removed"
            ),
            fontsize=9,
        )
    legend = [
        ("∂J/∂x̃ − mean_d(∂J/∂x̃) 1", "#4C72B0"),
        ("x̃ mean_d(∂J/∂x̃ ⊙ x̃): removed", REMOVED),
        ("kept: ∂J/∂x / rstd", KEPT),
    ]
    handles = [plt.Line2D([], [], color=colour, linewidth=2) for _, colour in legend]
    figure.legend(handles, [label for label, _ in legend], loc="outside lower center", ncol=3, fontsize=8.5)
    figure.suptitle("layer norm's backward keeps the part of ∂J/∂x̃ orthogonal to 1 and to x̃", fontsize=10.5)
    return figure, "\n\n".join(
        matrix(name, shown[name]) for name in ("dJ_dx_tilde", "along_one", "along_x_tilde", "kept")
    )


def conv2d_scatter() -> dict[str, np.ndarray]:
    """Chapter 12's δ and W, each δ[h,w] W added onto the window z[h,w] read, and the terms each x[u,v] receives."""
    numbers = conv2d.three_ways()
    delta, W = numbers["delta"], numbers["W"]
    (kH, kW), (H, Wd) = W.shape, numbers["x"].shape
    scattered, terms = np.zeros((H, Wd)), np.zeros((H, Wd), dtype=int)
    for (h, w), d in np.ndenumerate(delta):
        scattered[h : h + kH, w : w + kW] += d * W
        terms[h : h + kH, w : w + kW] += 1
    return dict(delta=delta, W=W, scattered=scattered, terms=terms)


def conv2d_by_hand(shown: dict[str, np.ndarray]) -> list[str]:
    """The entries of ∂J/∂x the chapter works by hand (conv2d.BY_HAND), each as its sum and its count of terms."""
    lines = []
    for u, v in conv2d.BY_HAND:
        count = shown["terms"][u, v]
        written = conv2d.by_hand(shown["delta"], shown["W"], u, v).splitlines()[0]
        lines.append(f"{written}   ({count} term{'s' if count > 1 else ''})")
    return lines


def conv2d_figure(plt):
    """δ; the input grid, each cell's count of terms, and the windows that read the last entry worked by hand; ∂J/∂x."""
    shown = conv2d_scatter()
    delta, terms, scattered = shown["delta"], shown["terms"], shown["scattered"]
    kH, kW = shown["W"].shape
    u, v = conv2d.BY_HAND[-1]
    covering = [(h, w) for h, w in np.ndindex(*delta.shape) if 0 <= u - h < kH and 0 <= v - w < kW]
    colours = ["#4C72B0", "#DD8452", "#55A868", "#8172B3"]
    figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.9), gridspec_kw=dict(width_ratios=[3, 4, 4]))
    panels = [
        (delta, "δ = ∂J/∂z: one per window", "{:+.2f}", "RdBu_r", -1),
        (terms, "windows that read each x[u,v]", "{:d}", "Greys", 0),
        (scattered, "∂J/∂x: the δ[h,w] W, summed", "{:+.3f}", "RdBu_r", -1),
    ]
    for axes_i, (values, title, number, colour_map, low) in zip(axes, panels):
        scale = 2 * np.abs(values).max()  # pale colours, the numbers on them legible
        axes_i.imshow(values, cmap=colour_map, vmin=low * scale, vmax=scale)
        for (i, j), value in np.ndenumerate(values):
            axes_i.text(j, i, minus_signs(number.format(value)), ha="center", va="center", fontsize=10)
        axes_i.set_xticks(range(values.shape[1])), axes_i.set_yticks(range(values.shape[0]))
        axes_i.tick_params(labelsize=8, length=0)
        axes_i.set_title(title, fontsize=10)
    for (h, w), colour, inset in zip(covering, colours, (0.06, 0.12, 0.18, 0.24)):
        axes[0].add_patch(plt.Rectangle((w - 0.45, h - 0.45), 0.9, 0.9, fill=False, edgecolor=colour, linewidth=2.5))
        axes[1].add_patch(
            plt.Rectangle(
                (w - 0.5 + inset, h - 0.5 + inset), kW - 2 * inset, kH - 2 * inset, fill=False, edgecolor=colour, lw=2
            )
        )
    by_hand = conv2d_by_hand(shown)
    for row, line in enumerate(by_hand):
        figure.text(0.5, 0.04 - 0.07 * row, line, ha="center", fontsize=9.5)
    figure.suptitle(
        f"the transposed convolution: each δ[h,w] scatters δ[h,w] W back onto its {kH}×{kW} window", fontsize=11
    )
    shown_text = [matrix(name, shown[name]) for name in ("delta", "terms", "scattered")]
    return figure, "\n\n".join([*shown_text, *by_hand])
