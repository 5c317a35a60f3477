"""The seed experiment's heat maps of δ2,n a1,nᵀ: when they are logged, on which scale, how they are labelled,
and that they read at the size TensorBoard's Time Series tab shows them by default."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_browser import HEAT_MAP, chromium_binary, headless_chromium, tensorboard

import experiments.seed as seed
from experiments.__main__ import main
from torchbp.functions import LinearFunction

ROOT = Path(__file__).resolve().parent.parent
ROWS = np.array([[0.01, -0.02, 0.03], [0.04, 0.0, -0.05], [0.05, -0.02, -0.02]])  # two samples, then their sum

# Time Series (TensorBoard 2.21) fits an image card's image into this box, scaled up or down, nearest-neighbour:
# 215 px high on every card, 286 px wide on the narrowest (wider cards have wider boxes).
TENSORBOARD_IMAGE_BOX = (286, 215)  # width, height
SMALLEST_TEXT = 13  # px as displayed, a font size like TensorBoard's own labels'
SMALLEST_DIGITS = 9  # px of ink from a digit's top to its foot, as displayed


def displayed_scale(width: int, height: int) -> float:
    """How TensorBoard scales an image of this size on its narrowest card, where it scales the most."""
    return min(TENSORBOARD_IMAGE_BOX[0] / width, TENSORBOARD_IMAGE_BOX[1] / height)


def drawn(rows=ROWS, scale=0.2, step=7):
    """The heat map's Figure, drawn, with its renderer and its pixels (row 0 at the top)."""
    figure = seed.heat_map_figure(rows, scale, step)
    figure.canvas.draw()
    return figure, figure.canvas.get_renderer(), np.asarray(figure.canvas.buffer_rgba())[..., :3]


def logged_images(logdir: Path) -> list:
    (run_dir,) = (logdir / "seed").iterdir()
    events = EventAccumulator(str(run_dir / "hand"), size_guidance={"images": 0})
    events.Reload()
    return events.Images("per_sample/seed/W2_gradient_contributions")


def test_images_at_every_recorded_step_and_at_the_final_step(tmp_path):
    assert main(["seed", "--steps", "20", "--logdir", str(tmp_path)]) == 0
    assert [image.step for image in logged_images(tmp_path)] == [0, 5, 10, 15, 20]


def test_tensorboard_shows_the_logged_images_unscaled_on_every_card(tmp_path):
    assert main(["seed", "--steps", "2", "--logdir", str(tmp_path)]) == 0
    assert {displayed_scale(image.width, image.height) for image in logged_images(tmp_path)} == {1}


def test_every_image_of_a_run_has_the_same_scale_the_runs_largest_value(tmp_path, monkeypatch):
    drawn = []

    def heat_map(rows, scale, step):
        drawn.append((rows, scale))
        return np.zeros((1, 1, 3), np.uint8)

    monkeypatch.setattr(seed, "heat_map", heat_map)
    assert main(["seed", "--steps", "20", "--logdir", str(tmp_path)]) == 0
    assert len(drawn) == 5
    assert {scale for _, scale in drawn} == {max(np.abs(rows).max() for rows, _ in drawn)}


def test_a_run_that_fails_its_check_draws_the_parameters_it_stopped_at_under_their_step(tmp_path, monkeypatch):
    original = LinearFunction.backward

    def wrong(ctx, delta):
        grad_a_prev, grad_W, grad_b = original(ctx, delta)
        return grad_a_prev, None if grad_W is None else -grad_W, grad_b  # None: not asked for (per-sample's pass)

    monkeypatch.setattr(LinearFunction, "backward", staticmethod(wrong))
    assert main(["seed", "--steps", "20", "--logdir", str(tmp_path)]) == 1  # step 0 fails, before any update
    assert [image.step for image in logged_images(tmp_path)] == [0]


def test_a_run_stopped_by_sigterm_still_logs_its_images(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments", "seed", "--steps", "1000000", "--logdir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # well past step 0 (whose record the heat maps keep) before the signal: a few hundred steps logged
        while not any(f.stat().st_size > 20000 for f in tmp_path.glob("seed/*/hand/events.out.tfevents.*")):
            assert time.monotonic() < deadline, "the run wrote no events within two minutes"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 143
    steps = [image.step for image in logged_images(tmp_path)]
    assert steps[0] == 0 and len(steps) == 2  # the first step, and where the run stopped


SCALES = {  # arrays of a run -> the scale
    "the largest value is at a later step": ([[[0.1, -0.2]], [[0.5, 0.0]]], 0.5),
    "the largest value is negative": ([[[0.1, -0.7]], [[0.5, 0.0]]], 0.7),
    "one array": ([[[0.3, 0.1]]], 0.3),
    "all zero: a scale all the same": ([[[0.0, 0.0]]], 1.0),
}


@pytest.mark.parametrize("case", SCALES)
def test_the_common_scale_is_the_largest_absolute_value_of_the_run(case):
    arrays, scale = SCALES[case]
    assert seed.common_scale(np.array(a) for a in arrays) == scale


def test_the_figure_colours_from_minus_to_plus_the_given_scale():
    axes = seed.heat_map_figure(ROWS, 0.2, step=7).axes[0]
    assert axes.images[0].get_clim() == (-0.2, 0.2)


def test_the_figure_labels_the_samples_their_sum_and_the_hidden_units():
    figure = seed.heat_map_figure(ROWS, 0.2, step=7)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["sample 1", "sample 2", "Σ = ∂J/∂W2"]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["1", "2", "3"]
    assert axes.get_xlabel() == "hidden unit j"
    assert figure.get_suptitle().startswith("step 7: δ2,n a1,nᵀ")
    assert len(figure.axes) == 2  # the heat map and its colour bar


UNITS = {  # scale -> the first sample's cells (0.01, −0.02, 0.03), the title's unit
    "a scale in [0.1, 1): tenths": (0.2, ["+0.10", "−0.20", "+0.30"], " in units of 10⁻¹"),
    "a scale in [0.01, 0.1): hundredths": (0.09, ["+1.00", "−2.00", "+3.00"], " in units of 10⁻²"),
    "a scale in [1, 10): no unit": (1.0, ["+0.01", "−0.02", "+0.03"], ""),
}


@pytest.mark.parametrize("case", UNITS)
def test_the_values_print_with_two_decimals_in_the_power_of_ten_below_the_scale_named_in_the_title(case):
    scale, cells, unit = UNITS[case]
    figure = seed.heat_map_figure(ROWS, scale, step=7)
    assert [text.get_text() for text in figure.axes[0].texts][:3] == cells
    assert figure.get_suptitle() == f"step 7: δ2,n a1,nᵀ{unit}"


def test_a_line_sets_the_sum_apart_from_its_terms():
    axes = seed.heat_map_figure(ROWS, 0.2, step=7).axes[0]
    assert [list(line.get_ydata()) for line in axes.lines] == [[1.5, 1.5]]


def test_the_image_is_rgb_bytes_that_tensorboard_shows_unscaled():
    image = seed.heat_map(ROWS, 0.2, step=7)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert displayed_scale(image.shape[1], image.shape[0]) == 1


def test_every_text_shows_at_least_13_px_in_tensorboard():
    figure, _, image = drawn()
    scale = displayed_scale(image.shape[1], image.shape[0])
    texts = [text for text in figure.findobj(lambda artist: hasattr(artist, "get_fontsize")) if text.get_text()]
    assert len(texts) > 18  # the cells, the ticks, the labels and the title
    assert min(text.get_fontsize() * figure.dpi / 72 * scale for text in texts) >= SMALLEST_TEXT


def test_the_printed_digits_are_at_least_9_px_tall_in_tensorboard():
    figure, renderer, image = drawn()  # ROWS on the scale 0.2: black text on pale cells
    scale = displayed_scale(image.shape[1], image.shape[0])
    for text in figure.axes[0].texts:
        box = text.get_window_extent(renderer)
        cell = image[round(image.shape[0] - box.y1) : round(image.shape[0] - box.y0), round(box.x0) : round(box.x1)]
        inked = np.flatnonzero((cell.min(axis=2) < 128).any(axis=1))
        assert (inked[-1] - inked[0] + 1) * scale >= SMALLEST_DIGITS, text.get_text()


def test_each_value_fits_its_cell_with_room_to_spare():
    figure, renderer, _ = drawn(np.full((6, 3), -0.0999), scale=0.0999)  # −9.99: the widest value printed
    axes = figure.axes[0].get_window_extent(renderer)
    for text in figure.axes[0].texts:
        box = text.get_window_extent(renderer)
        assert box.width <= axes.width / 3 - 8 and box.height <= axes.height / 6 - 8, text.get_text()


def test_nothing_is_cut_off_at_the_edges_of_the_image():
    figure, renderer, image = drawn(np.full((6, 3), -0.0999), scale=0.0999, step=100000)
    inside = figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans)
    assert (inside.x0, inside.y0) >= (0, 0) and (inside.x1, inside.y1) <= (image.shape[1], image.shape[0])


# The heat map's card, once its image has loaded: the image's own size and the size it is shown at.
SHOWN = """(() => {
  const image = document.querySelector('image-card tb-truncated-path[title="IMAGE_TAG"]')
    .closest("image-card").querySelector("img");
  const shown = image.getBoundingClientRect();
  return {natural: [image.naturalWidth, image.naturalHeight], shown: [shown.width, shown.height]};
})()""".replace("IMAGE_TAG", "per_sample/seed/W2_gradient_contributions")


def test_tensorboard_shows_the_heat_map_at_its_natural_size_on_its_default_card(tmp_path):
    binary = chromium_binary()
    logdir = tmp_path / "runs"
    assert main(["seed", "--steps", "2", "--logdir", str(logdir)]) == 0
    with (
        tensorboard(logdir, tmp_path / "tensorboard.log") as address,
        headless_chromium(binary, tmp_path / "profile") as page,  # a 1400-px-wide window
    ):
        page.open(address + "#timeseries")
        page.wait_for("loaded heat map", HEAT_MAP, tmp_path / "heat_map.png")
        image = page.wait_for("heat map's size", SHOWN, tmp_path / "heat_map.png")
    (width, height), (box_width, box_height) = image["natural"], image["shown"]
    assert min(box_width / width, box_height / height) == pytest.approx(1, abs=1e-3)  # object-fit: contain


def test_importing_the_experiment_does_not_import_matplotlib():
    code = "import sys, experiments.seed; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
