"""Train a torchbp model and its native twin side by side, checking them at every step.

Both copies start from identical parameters, see the same batches in the same
order and take the same optimizer steps. After each checked backward the loss
and every parameter's gradient go through :meth:`torchbp.check.ModelPair.compare`; the
first mismatch stops training with :class:`LockstepMismatch`, which carries the
step and the report.

Two modes:

- synced (the default): before each checked step the native twin takes the
  torchbp model's parameters, so both gradients are computed at the same point
  and only rounding can separate them. Two float32 models trained
  independently drift apart by rounding, and a fixed tolerance would, after
  some hundreds of steps, flag a correct backward; synced mode never drifts.
- free-running (``free_running=True``): both train on their own. Each check
  also compares the parameters themselves, so the report shows how far the
  trajectories have drifted, and the tolerance is ``DRIFT_FACTOR`` times the
  dtype's default to allow for it. A wrong backward is off by a factor, not by
  rounding, and still fails.

The trainer (``trainer.py``) trains the two; ``comparison.py`` checks a step;
what the run found, its verdict and where its time went are its result
(``result.py``); the log is :mod:`torchbp.tensorboard_log`, and the work across
processes :mod:`torchbp.distributed`.

Example::

    with LockstepTrainer(model, torch.nn.MSELoss(), lr=0.5, log_dir=new_run_dir("runs", "mine")) as trainer:
        result = trainer.train(loader, steps=1000)  # raises LockstepMismatch on a wrong gradient
"""

from torchbp.lockstep.comparison import DRIFT_FACTOR
from torchbp.lockstep.result import LockstepMismatch, LockstepResult, StepRecord
from torchbp.lockstep.trainer import LockstepTrainer
from torchbp.tensorboard_log import new_run_dir

__all__ = ["DRIFT_FACTOR", "LockstepMismatch", "LockstepResult", "LockstepTrainer", "StepRecord", "new_run_dir"]
