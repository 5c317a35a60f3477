"""The lockstep trainer on a user's own model: it agrees, it catches, it logs."""

import pytest
import torch

import torchbp
from torchbp.functions import LinearFunction, SigmoidFunction
from torchbp.lockstep import LockstepMismatch, LockstepResult, LockstepTrainer
from torchbp.tensorboard_log import TensorBoardLog, new_run_dir


def users_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 2), torch.nn.Sigmoid())


def batches(count=4, size=8):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, generator=generator), torch.rand(size, 2, generator=generator)) for _ in range(count)]


def plant_weight_bug(monkeypatch):
    original = LinearFunction.backward

    def wrong(ctx, delta):
        grad_a_prev, grad_W, grad_b = original(ctx, delta)
        return grad_a_prev, None if grad_W is None else grad_W * 1.01, grad_b  # 1 % off

    monkeypatch.setattr(LinearFunction, "backward", staticmethod(wrong))


@pytest.fixture
def planted_weight_bug(monkeypatch):
    plant_weight_bug(monkeypatch)


def test_trainer_checks_every_step_and_the_two_sides_agree():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5)
    result = trainer.train(batches(), steps=10)
    assert result.steps == result.checks == 10
    assert result.hand_loss == result.autograd_loss
    assert result.max_loss_difference == 0 and result.max_grad_error <= 1e-6


def test_trainer_trains_the_torchbp_copy_and_leaves_the_model_alone():
    model = users_model()
    before = [p.clone() for p in model.parameters()]
    trainer = LockstepTrainer(model, torch.nn.MSELoss(), lr=0.5)
    first = trainer.step(*batches()[0]).hand_loss
    for _ in range(20):
        last = trainer.step(*batches()[0]).hand_loss
    assert last < first
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert all(
        isinstance(m, (torchbp.nn.Linear, torchbp.nn.Sigmoid, torch.nn.Sequential))
        for m in trainer.hand_model.modules()
    )
    assert not any(isinstance(m, torchbp.hand_derived.HandDerivedModule) for m in trainer.native_model.modules())


def test_a_wrong_gradient_stops_training_at_the_first_step_with_the_parameter_named(planted_weight_bug):
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5)
    with pytest.raises(LockstepMismatch) as raised:
        trainer.train(batches(), steps=10)
    assert raised.value.step == 0
    assert {row.name for row in raised.value.report.mismatches} == {"0.weight.grad", "2.weight.grad"}
    assert "step 0" in str(raised.value) and "0.weight.grad" in str(raised.value)


def test_the_logged_error_over_tolerance_is_0_for_equal_bits_and_above_1_for_a_wrong_gradient(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged(run_dir):
        hand = EventAccumulator(str(run_dir / "hand"), size_guidance={"tensors": 0})
        hand.Reload()
        return [float(e.tensor_proto.float_val[0]) for e in hand.Tensors("match/mine")]

    right = new_run_dir(tmp_path, "mine")
    with LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, log_dir=right, log_name="mine") as trainer:
        trainer.train(batches(), steps=3)
    assert logged(right) == [0.0, 0.0, 0.0] and trainer.result.max_error_over_tolerance == 0.0
    plant_weight_bug(monkeypatch)  # 1 % off, a thousand times float32's tolerance
    wrong = new_run_dir(tmp_path, "mine")
    with LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, log_dir=wrong, log_name="mine") as trainer:
        with pytest.raises(LockstepMismatch) as raised:
            trainer.train(batches(), steps=3)
    assert logged(wrong) == [pytest.approx(raised.value.report.max_share_of_tolerance(), rel=1e-6)]
    assert logged(wrong)[0] > 100 and trainer.result.max_error_over_tolerance > 100


def test_a_mismatch_stops_before_the_update(planted_weight_bug):
    model = users_model()
    trainer = LockstepTrainer(model, torch.nn.MSELoss(), lr=0.5)
    with pytest.raises(LockstepMismatch):
        trainer.step(*batches()[0])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), trainer.hand_model.parameters()))


def test_with_check_every_a_wrong_gradient_is_caught_at_the_next_checked_step(monkeypatch):
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, check_every=3)
    trainer.train(batches(), steps=2)  # steps 0 and 1, correct
    plant_weight_bug(monkeypatch)
    with pytest.raises(LockstepMismatch) as raised:
        trainer.train(batches(), steps=5)  # step 2 is not checked, step 3 is
    assert raised.value.step == 3


def test_unchecked_steps_are_not_compared():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, check_every=3)
    records = []
    trainer.train(batches(), steps=7, on_step=records.append)
    assert [r.report is not None for r in records] == [True, False, False, True, False, False, True]
    assert trainer.result.checks == 3


def test_synced_mode_gives_the_native_twin_the_torchbp_parameters_before_each_check():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5)
    with torch.no_grad():
        next(trainer.native_model.parameters()).add_(1.0)  # the twin wanders off
    trainer.step(*batches()[0])  # still matches: checked at the torchbp parameters
    for mine, theirs in zip(trainer.hand_model.parameters(), trainer.native_model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_free_running_mode_reports_parameter_drift():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, free_running=True)
    record = trainer.step(*batches()[0])
    names = [row.name for row in record.report.rows]
    assert "0.weight" in names and "0.weight.grad" in names
    with torch.no_grad():
        next(trainer.native_model.parameters()).mul_(1.5)  # a drift far beyond rounding
    with pytest.raises(LockstepMismatch) as raised:
        trainer.step(*batches()[0])
    assert "0.weight" in [row.name for row in raised.value.report.mismatches]


def test_free_running_mode_still_catches_a_wrong_gradient(planted_weight_bug):
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, free_running=True)
    with pytest.raises(LockstepMismatch) as raised:
        trainer.step(*batches()[0])
    assert "0.weight.grad" in [row.name for row in raised.value.report.mismatches]


def test_a_custom_optimizer_and_a_plain_loss_function():
    trainer = LockstepTrainer(
        users_model(), lambda out, y: ((out - y) ** 2).sum(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)
    )
    result = trainer.train(batches(), steps=5)
    assert result.checks == 5 and isinstance(trainer.hand_optimizer, torch.optim.Adam)


def test_batches_are_re_iterated_as_epochs_until_the_steps_are_done():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss())
    assert trainer.train(batches(count=3), steps=7).steps == 7


def test_an_exhausted_iterator_ends_training_instead_of_spinning():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss())
    assert trainer.train(iter(batches(count=3)), steps=10).steps == 3


def test_metrics_are_evaluated_on_both_models():
    x, y = batches()[0]
    trainer = LockstepTrainer(
        users_model(), torch.nn.MSELoss(), metrics={"loss_on_x": lambda m: torch.nn.functional.mse_loss(m(x), y)}
    )
    result = trainer.train(batches(), steps=3)
    hand, autograd = result.metrics["loss_on_x"]
    assert hand == autograd and hand > 0


@pytest.mark.parametrize("argument, value", [("check_every", 0), ("metric_every", 0)])
def test_bad_intervals_are_refused(argument, value):
    with pytest.raises(ValueError, match=argument):
        LockstepTrainer(users_model(), torch.nn.MSELoss(), **{argument: value})


def test_new_run_dir_never_hands_out_a_folder_twice(tmp_path):
    folders = {new_run_dir(tmp_path, "exp") for _ in range(5)}
    assert len(folders) == 5 and all(f.parent == tmp_path / "exp" for f in folders)


def test_a_log_refuses_a_folder_that_already_holds_events(tmp_path):
    run_dir = new_run_dir(tmp_path, "exp")
    TensorBoardLog(run_dir).close()
    with pytest.raises(FileExistsError, match="zigzag"):
        TensorBoardLog(run_dir)


def test_the_sigmoid_module_is_used_on_the_hand_side(monkeypatch):
    calls = []
    original = SigmoidFunction.apply
    monkeypatch.setattr(SigmoidFunction, "apply", lambda *a: calls.append(1) or original(*a))
    LockstepTrainer(users_model(), torch.nn.MSELoss()).step(*batches()[0])
    assert len(calls) == 2  # two sigmoid layers, once each, on the torchbp side only


def test_metrics_are_taken_at_the_parameters_of_the_logged_step(tmp_path):
    x, y = batches()[0]
    seen = []
    metric = lambda m: seen.append(torch.nn.functional.mse_loss(m(x), y).item()) or seen[-1]  # noqa: E731
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, metrics={"loss_on_x": metric}, metric_every=2)
    records = []
    trainer.train([(x, y)], steps=4, on_step=records.append)
    hand_values = seen[::2]  # each evaluation measures the torchbp model, then the native one
    assert len(hand_values) == 3  # before steps 0 and 2, and after the last
    assert hand_values[0] == pytest.approx(records[0].hand_loss)  # the loss of step 0, at the same parameters
    assert hand_values[1] == pytest.approx(records[2].hand_loss)


def test_a_diverged_run_shows_nan_rather_than_a_zero_error():
    x, y = batches()[0]
    x = x.clone()
    x[0, 0] = float("nan")
    result = LockstepTrainer(users_model(), torch.nn.MSELoss()).train([(x, y)], steps=2)
    assert result.max_loss_difference != result.max_loss_difference  # NaN


def test_dropout_draws_the_same_mask_on_both_sides():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))
    result = LockstepTrainer(model, torch.nn.MSELoss()).train(batches(), steps=5)
    assert result.checks == 5


def test_a_model_torchbp_would_not_change_is_refused():
    with pytest.raises(ValueError, match="no layer that torchbp replaces"):
        LockstepTrainer(torch.nn.Sequential(torch.nn.ELU()), lambda out, y: (out - y).sum())


def test_the_time_split_accounts_for_training_checking_and_logging(tmp_path):
    trainer = LockstepTrainer(
        users_model(),
        torch.nn.MSELoss(),
        lr=0.5,
        log_dir=new_run_dir(tmp_path, "t"),
        metrics={"loss_sum": lambda model: 0.0},
        metric_every=2,
    )
    result = trainer.train(batches(), steps=6)
    trainer.close()
    split = result.time_split
    assert set(split) == {"training", "checking", "logging"} and all(seconds > 0 for seconds in split.values())
    assert sum(split.values()) <= result.seconds


def test_the_comparison_is_the_one_check_model_uses(monkeypatch):
    titles = []
    original = torchbp.check.ModelPair.compare

    def recording(self, title, *args, **kwargs):
        titles.append(title)
        return original(self, title, *args, **kwargs)

    monkeypatch.setattr(torchbp.check.ModelPair, "compare", recording)
    LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5).step(*batches()[0])
    torchbp.check_model(users_model(), torch.nn.MSELoss(), *batches()[0])
    assert titles == ["lockstep step 0 (synced)", "check_model(Sequential)"]


def test_a_mismatch_report_names_the_hand_derived_and_the_native_layers(planted_weight_bug):
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ELU(), torch.nn.Linear(5, 2))
    with pytest.raises(LockstepMismatch) as raised:
        LockstepTrainer(model, torch.nn.MSELoss(), lr=0.5).step(*batches()[0])
    assert "hand-derived: 0 Linear, 2 Linear, loss MSELoss; native: 1 ELU" in str(raised.value)


@pytest.mark.parametrize("free_running", [False, True], ids=["synced", "free-running"])
def test_a_report_read_after_the_step_keeps_its_figures(free_running):
    reports = []
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, free_running=free_running)
    trainer.train(batches(), steps=2, on_step=lambda record: reports.append(record.report))
    for report in reports:  # read after the update, as an on_step callback or a kept record would
        loss_row = report.rows[0]
        assert loss_row.name == "loss" and loss_row.reference_max > 0 and not loss_row.note
        if free_running:
            assert all(not row.note for row in report.rows)


def test_a_trainer_used_in_a_with_block_closes_its_log_with_the_last_steps_and_the_verdict(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = new_run_dir(tmp_path, "mine")
    with LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, log_dir=run_dir, log_name="mine") as trainer:
        for inputs, target in batches(count=3):
            trainer.step(inputs, target)  # no train(), no flush: only closing writes the held scalars
    hand = EventAccumulator(str(run_dir / "hand"), size_guidance={"tensors": 0})
    hand.Reload()
    assert [event.step for event in hand.Tensors("loss/mine")] == [0, 1, 2]
    assert [event.step for event in hand.Tensors("match/mine")] == [0, 1, 2]
    assert hand.Tensors("verdict/mine")
    limit = EventAccumulator(str(run_dir / "tolerance"), size_guidance={"tensors": 0})
    limit.Reload()
    assert [(e.step, float(e.tensor_proto.float_val[0])) for e in limit.Tensors("match/mine")] == [
        (0, 1.0),
        (1, 1.0),
        (2, 1.0),
    ]


def test_the_lockstep_names_are_the_same_objects_from_torchbp_and_from_torchbp_lockstep():
    from torchbp import lockstep

    for name in ("LockstepTrainer", "LockstepMismatch", "LockstepResult", "StepRecord", "new_run_dir"):
        assert getattr(lockstep, name) is getattr(torchbp, name)


@pytest.mark.parametrize(
    "stop, words",
    [
        (KeyboardInterrupt(), "an interrupt"),
        (SystemExit(143), "an exit with status 143 (SIGTERM)"),
        (SystemExit(1), "an exit with status 1"),
        (RuntimeError("planted"), "an error (RuntimeError)"),
    ],
)
def test_a_run_records_what_stopped_it_and_its_verdict_says_so(stop, words):
    result = LockstepResult(steps=4, checks=4)
    with pytest.raises(type(stop)):
        with result.run(steps=10):
            raise stop
    assert result.stopped_by == words and result.steps_planned == 14 and result.seconds > 0
    assert result.verdict(1, "synced", "layers").startswith(f"**STOPPED** by {words} after 4 of 14 steps;")


def test_a_mismatch_is_not_recorded_as_what_stopped_the_run():
    result = LockstepResult()
    with pytest.raises(LockstepMismatch):
        with result.run(steps=None):
            raise LockstepMismatch(0, torchbp.Report("planted"))
    assert result.stopped_by is None


@pytest.mark.parametrize(
    "fields, headline",
    [
        ({}, "**NOT CHECKED**: no step was compared."),
        ({"steps": 3, "checks": 3}, "**MATCH**: the two models agreed at every one of 3 checked steps."),
        (
            {"steps": 1, "checks": 1, "mismatch_step": 0},
            "**MISMATCH** at step 0: the report is in the program's output.",
        ),
    ],
)
def test_the_verdict_is_written_from_the_result_alone(fields, headline):
    lines = LockstepResult(**fields).verdict(2, "free-running", "hand-derived: 0 Linear; native: none").splitlines()
    assert lines[0] == headline
    steps, checks = fields.get("steps", 0), fields.get("checks", 0)
    assert f"| steps taken, checked | {steps}, {checks} (every 2, free-running) |" in lines
    assert "| layers | hand-derived: 0 Linear; native: none |" in lines


def test_the_trainers_verdict_is_its_results():
    trainer = LockstepTrainer(users_model(), torch.nn.MSELoss(), lr=0.5, check_every=2)
    trainer.train(batches(), steps=3)
    assert trainer.verdict() == trainer.result.verdict(2, "synced", trainer.layers)
    assert trainer.verdict().startswith("**MATCH**: the two models agreed at every one of 2 checked steps.")
