"""The seed experiment's heat maps of δ2,n a1,nᵀ: when they are logged, on which scale, how they are labelled."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import experiments.seed as seed
from experiments.__main__ import main
from torchbp.functions import LinearFunction

ROOT = Path(__file__).resolve().parent.parent
ROWS = np.array([[0.01, -0.02, 0.03], [0.04, 0.0, -0.05], [0.05, -0.02, -0.02]])  # two samples, then their sum


def logged_images(logdir: Path) -> list:
    (run_dir,) = (logdir / "seed").iterdir()
    events = EventAccumulator(str(run_dir / "hand"), size_guidance={"images": 0})
    events.Reload()
    return events.Images("per_sample/seed/W2_gradient_contributions")


def test_images_at_every_recorded_step_and_at_the_final_step(tmp_path):
    assert main(["seed", "--steps", "20", "--logdir", str(tmp_path)]) == 0
    assert [image.step for image in logged_images(tmp_path)] == [0, 5, 10, 15, 20]


def test_the_logged_images_are_wide_enough_to_read_without_zooming(tmp_path):
    assert main(["seed", "--steps", "2", "--logdir", str(tmp_path)]) == 0
    assert all(image.width >= 500 for image in logged_images(tmp_path))


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
    assert [label.get_text().split("\n")[0] for label in axes.get_xticklabels()] == [
        "hidden unit 1",
        "hidden unit 2",
        "hidden unit 3",
    ]
    assert "step 7" in axes.get_title()
    assert len(figure.axes) == 2  # the heat map and its colour bar


def test_a_line_sets_the_sum_apart_from_its_terms():
    axes = seed.heat_map_figure(ROWS, 0.2, step=7).axes[0]
    assert [list(line.get_ydata()) for line in axes.lines] == [[1.5, 1.5]]


def test_the_image_is_rgb_bytes_at_least_500_pixels_wide():
    image = seed.heat_map(ROWS, 0.2, step=7)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] >= 500


def test_importing_the_experiment_does_not_import_matplotlib():
    code = "import sys, experiments.seed; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
