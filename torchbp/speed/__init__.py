"""What exists only for speed, kept off the reading path of the math.

- :mod:`torchbp.speed.calls`: shortcuts around PyTorch's per-call costs (a Function's
  older-form twin, products in place, the squared error's kernel). The layers reach
  them only through :mod:`torchbp.hand_derived`, the one hook.
- :mod:`torchbp.speed.fused`: the fused chain, a network (and its loss) as one
  Function, built by :func:`torchbp.fuse` and :func:`torchbp.fuse_loss` from the
  steps the layers register.
- :mod:`torchbp.speed.events`: TensorBoard scalar events serialized and framed by hand, with
  C checksums, for the lockstep trainer's log (:mod:`torchbp.tensorboard_log`).

Each module's docstring gives the figure that justifies it, measured by
``python -m experiments.bench`` or the command it names.
"""
