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
        if event.summary.value
        and event.summary.value[0].HasField("tensor")
        and event.summary.value[0].metadata.plugin_data.plugin_name in ("", "scalars")
    ]


def test_a_steps_scalars_share_one_event_per_run_and_all_reach_the_files(tmp_path):
    log = TensorBoardLog(tmp_path, name="mine")
    for step in range(3):
        log.metric("accuracy", 1.0 + step, 2.0 + step, step)
        log.raw_error("per_sample_sum_error", 0.25 * step, step)
    log.close()
    assert scalar_events(tmp_path / "hand") == [
        (s, {"metrics/mine/accuracy": 1.0 + s, "raw_error/mine/per_sample_sum_error": 0.25 * s}) for s in range(3)
    ]
    assert scalar_events(tmp_path / "autograd") == [(s, {"metrics/mine/accuracy": 2.0 + s}) for s in range(3)]
    assert not (tmp_path / "tolerance").exists()  # no step was checked: no limit to draw
    assert [p for p in event_files(tmp_path) if p.parent == tmp_path] == []  # the folder itself is no run


def test_a_checked_step_draws_its_error_over_tolerance_under_the_tolerance_line_and_the_raw_errors_after(tmp_path):
    import torch

    log = TensorBoardLog(tmp_path, name="mine")
    log.step(
        0,
        0.5,
        0.5,
        abs_loss_difference=0.0,
        max_grad_error=2**-20,
        grad_norms=torch.tensor([1.0, 2.0]),
        error_over_tolerance=0.25,
    )
    log.step(1, 0.25, 0.25)  # not checked, nothing recorded per sample
    log.close(verdict="**MATCH**", step=2)
    match, raw = "match/mine", "raw_error/mine"
    assert scalar_events(tmp_path / "hand") == [
        (0, {"loss/mine": 0.5, match: 0.25, f"{raw}/abs_loss_difference": 0.0, f"{raw}/max_grad_error": 2**-20}),
        (1, {"loss/mine": 0.25}),
    ]
    assert scalar_events(tmp_path / "autograd") == [(0, {"loss/mine": 0.5}), (1, {"loss/mine": 0.25})]
    assert scalar_events(tmp_path / "tolerance") == [(0, {match: 1.0})]  # the limit, on the same chart
    (hand,) = event_files(tmp_path / "hand")
    loaded = list(LegacyEventFileLoader(str(hand)).Load())
    histograms = [(event.step, v.tag) for event in loaded for v in event.summary.value if v.HasField("histo")]
    assert histograms == [(0, "per_sample/mine/grad_norm")]
    texts = [
        (event.step, v.tag)
        for event in loaded
        for v in event.summary.value
        if v.metadata.plugin_data.plugin_name == "text"
    ]
    assert texts == [(2, "verdict/mine")]
    # TensorBoard orders sections alphabetically: the limit chart right after the loss, the raw errors later
    sections = sorted({tag.split("/")[0] for _, tags in scalar_events(tmp_path / "hand") for tag in tags})
    assert sections == ["loss", "match", "raw_error"]


def test_the_hparams_row_declares_the_shared_columns_and_shows_the_first_five_settings(tmp_path):
    from tensorboard.plugins.hparams import metadata

    from torchbp.tensorboard_log import SUMMARY

    run_dir = tmp_path / "mine" / "261205-120000"
    log = TensorBoardLog(run_dir, name="mine")
    settings = {"experiment": "mine", "verdict": "MATCH", "steps": 3, "lr": 0.5, "batch_size": "full", "seed": 0}
    log.close(hparams=settings, summary={"final_loss": 0.125, "error_over_tolerance": 0.0, "metric": None}, step=3)
    assert scalar_events(run_dir / "hand") == [(3, {"summary/final_loss": 0.125, "summary/error_over_tolerance": 0.0})]
    (hand,) = event_files(run_dir / "hand")
    plugin = {
        v.tag: metadata.parse_session_start_info_plugin_data(v.metadata.plugin_data.content)
        if v.tag == metadata.SESSION_START_INFO_TAG
        else metadata.parse_experiment_plugin_data(v.metadata.plugin_data.content)
        for event in LegacyEventFileLoader(str(hand)).Load()
        for v in event.summary.value
        if v.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
    }
    experiment, session = plugin[metadata.EXPERIMENT_TAG], plugin[metadata.SESSION_START_INFO_TAG]
    assert [(h.name, h.differs) for h in experiment.hparam_infos] == [
        ("experiment", True),
        ("verdict", True),
        ("steps", True),
        ("lr", True),
        ("batch_size", True),
        ("seed", False),
    ]
    assert [m.name.tag for m in experiment.metric_infos] == [f"summary/{key}" for key in SUMMARY]
    assert session.group_name == "261205-120000"  # the run id, short enough for the Trial ID column
    assert {key: value.string_value for key, value in session.hparams.items()} == {
        k: str(v) for k, v in settings.items()
    }


def test_run_ids_are_unique_across_the_experiments_of_a_log_folder(tmp_path):
    from torchbp.tensorboard_log import new_run_dir

    first, second, third = new_run_dir(tmp_path, "a"), new_run_dir(tmp_path, "b"), new_run_dir(tmp_path, "a")
    assert len({first.name, second.name, third.name}) == 3  # the HParams tab names a run by its id alone
    assert second.name.startswith(first.name) and third.name.startswith(first.name)


@pytest.mark.parametrize("name, tag", [(None, "loss"), ("seed", "loss/seed")])
def test_tags_are_grouped_by_quantity_then_by_the_runs_name(name, tag):
    log = TensorBoardLog.__new__(TensorBoardLog)
    log.name = name
    assert log.tag("loss") == tag
    assert log.tag("raw_error", "max_grad_error") == tag.replace("loss", "raw_error") + "/max_grad_error"


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
