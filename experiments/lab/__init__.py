"""What the experiments run in and share.

- ``registry.py``: what an experiment is (its ``Config`` and the ``Setup`` it hands the trainer),
  and the table of them, filled by the ``@experiment`` decorator in each experiment's file;
- ``runner.py``: one experiment through the lockstep trainer, and the summary table of several;
- ``data.py``, ``models.py``, ``metrics.py``, ``minibatches.py``: the digits, the sigmoid MLP,
  accuracy, and seeded minibatches (and each process's shard of them under torchrun).
"""
