"""The lockstep run's TensorBoard log: what reaches the event files, and when."""

import time

import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.util.tensor_util import make_ndarray

from torchbp.tensorboard_log import TensorBoardLog, event_files


def scalar_events(folder):
    """[(step, {tag: value})] of the events in ``folder``'s own event file that carry scalars."""
    (path,) = [p for p in event_files(folder) if p.parent == folder]
    return [
        (event.step, {value.tag: float(make_ndarray(value.tensor)) for value in event.summary.value})
        for event in LegacyEventFileLoader(str(path)).Load()
        if event.summary.value and event.summary.value[0].HasField("tensor")
    ]


def test_a_steps_scalars_share_one_event_per_run_and_all_reach_the_files(tmp_path):
    log = TensorBoardLog(tmp_path, name="mine")
    for step in range(3):
        log.metric("accuracy", 1.0 + step, 2.0 + step, step)
        log.match("abs_loss_difference", 0.5 * step, step)
        log.match("max_grad_error", 0.25 * step, step)
    log.close()
    assert scalar_events(tmp_path / "hand") == [(s, {"metrics/mine/accuracy": 1.0 + s}) for s in range(3)]
    assert scalar_events(tmp_path / "autograd") == [(s, {"metrics/mine/accuracy": 2.0 + s}) for s in range(3)]
    assert scalar_events(tmp_path) == [
        (s, {"match/mine/abs_loss_difference": 0.5 * s, "match/mine/max_grad_error": 0.25 * s}) for s in range(3)
    ]


def test_a_step_is_logged_from_plain_values_the_match_figures_only_where_it_was_checked(tmp_path):
    import torch

    log = TensorBoardLog(tmp_path, name="mine")
    log.step(0, 0.5, 0.5, abs_loss_difference=0.0, max_grad_error=1e-7, grad_norms=torch.tensor([1.0, 2.0]))
    log.step(1, 0.25, 0.25)  # not checked, nothing recorded per sample
    log.close(verdict="**MATCH**", step=2)
    assert scalar_events(tmp_path / "hand") == [(0, {"loss/mine": 0.5}), (1, {"loss/mine": 0.25})]
    assert scalar_events(tmp_path / "autograd") == [(0, {"loss/mine": 0.5}), (1, {"loss/mine": 0.25})]
    (hand,) = event_files(tmp_path / "hand")
    histograms = [
        (event.step, v.tag)
        for event in LegacyEventFileLoader(str(hand)).Load()
        for v in event.summary.value
        if v.HasField("histo")
    ]
    assert histograms == [(0, "per_sample/mine/grad_norm")]
    (pair,) = [p for p in event_files(tmp_path) if p.parent == tmp_path]
    loaded = LegacyEventFileLoader(str(pair)).Load()
    tags = [(event.step, sorted(v.tag for v in event.summary.value)) for event in loaded if event.summary.value]
    assert tags == [(0, ["match/mine/abs_loss_difference", "match/mine/max_grad_error"]), (2, ["verdict/mine"])]


@pytest.mark.parametrize("name, tag", [(None, "loss"), ("seed", "loss/seed")])
def test_tags_are_grouped_by_quantity_then_by_the_runs_name(name, tag):
    log = TensorBoardLog.__new__(TensorBoardLog)
    log.name = name
    assert log.tag("loss") == tag
    assert log.tag("match", "max_grad_error") == tag.replace("loss", "match") + "/max_grad_error"


def test_scalars_reach_the_disk_within_flush_secs_without_a_close(tmp_path):
    log = TensorBoardLog(tmp_path, flush_secs=1)
    log.metric("accuracy", 1.0, 1.0, 0)
    time.sleep(1.1)
    log.metric("accuracy", 2.0, 2.0, 1)  # due: the held scalars are written and the files flushed
    assert [step for step, _ in scalar_events(tmp_path / "hand")] == [0, 1]
    log.close()


def test_a_histogram_after_held_scalars_keeps_the_order_they_were_logged_in(tmp_path):
    import torch

    log = TensorBoardLog(tmp_path, flush_secs=3600)
    log.metric("accuracy", 1.0, 1.0, 0)
    log.histogram("hand", "per_sample/grad_norm", torch.ones(3), 0)
    log.close()
    (path,) = [p for p in event_files(tmp_path / "hand")]
    tags = [v.tag for event in LegacyEventFileLoader(str(path)).Load() for v in event.summary.value]
    assert tags == ["metrics/accuracy", "per_sample/grad_norm"]
