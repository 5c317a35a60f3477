"""How a lockstep step is checked: when, at which parameters, under which tolerance (see :mod:`torchbp.lockstep`)."""

from __future__ import annotations

import torch

from torchbp.check import ModelPair
from torchbp.compare import DEFAULT_RTOL, Report

DRIFT_FACTOR = 100.0  # free-running mode's tolerance, times the dtype's default


class StepComparison:
    """Compares the torchbp model with its native twin at every ``every``-th step.

    Synced (the default), the twin first takes the torchbp parameters (:meth:`sync`), so only the
    gradients' rounding can differ. Free-running, the parameters are compared too, under
    ``DRIFT_FACTOR`` times the dtype's default tolerance, to show how far the two have drifted.
    """

    def __init__(
        self, models: ModelPair, layers: str, every: int, free_running: bool, rtol: float | None, atol: float | None
    ):
        self.models, self.layers, self.every, self.free_running = models, layers, every, free_running
        self.rtol, self.atol = rtol, atol

    @property
    def mode(self) -> str:
        return "free-running" if self.free_running else "synced"

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def sync(self) -> None:
        """In synced mode, give the native twin the torchbp parameters."""
        if not self.free_running:
            with torch.no_grad():
                torch._foreach_copy_(list(self.models.native_parameters), list(self.models.hand_parameters))

    def compare(self, step: int, hand_loss: torch.Tensor, native_loss: torch.Tensor) -> Report:
        """The report of ``step``: its losses and every gradient (and parameter, free-running), naming the layers."""
        rtol = self.rtol
        if self.free_running and rtol is None:
            rtol = DRIFT_FACTOR * DEFAULT_RTOL.get(hand_loss.dtype, 0.0)
        report = self.models.compare(
            f"lockstep step {step} ({self.mode})",
            (hand_loss, native_loss),
            # In free-running mode the update changes the parameters in place: measure them now.
            parameters=self.free_running,
            rtol=rtol,
            atol=self.atol,
            defer_equal=not self.free_running,
        )
        report.layers = self.layers
        return report
