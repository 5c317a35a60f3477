"""The derivation's network: 2 inputs, 3 sigmoid hidden units, 1 sigmoid output, no biases.

Five fixed training samples, the cost J = ½ Σ (y − ŷ)², full-batch gradient
descent, float64. Beside the loss curves it logs how each sample contributes
to the second layer's weight gradient,

    ∂J/∂W2 = Σ_n δ2,n a1,nᵀ        (each term 1×3, W2's shape in torch's (out, in) convention)

as a heat map: one row per sample and a last row with their sum, which is the
full gradient (checked at every logged step).
"""

from __future__ import annotations

import torch

from experiments.heatmap import heat_map
from experiments.minibatches import Minibatches
from experiments.registry import Config, Setup, experiment
from torchbp.lockstep import LockstepTrainer, StepRecord

SAMPLES = 5


class HalfSumSquaredError(torch.nn.Module):
    """J = ½ Σ (y − ŷ)², whose gradient with respect to ŷ is ŷ − y."""

    def __init__(self):
        super().__init__()
        self.sum_squared_error = torch.nn.MSELoss(reduction="sum")

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.sum_squared_error(y_hat, y)


def network(seed: int, dtype: torch.dtype, device: str) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 3, bias=False),
        torch.nn.Sigmoid(),
        torch.nn.Linear(3, 1, bias=False),
        torch.nn.Sigmoid(),
    ).to(dtype=dtype, device=device)


def samples(seed: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Five inputs in [0, 1]² and five targets in [0, 1], fixed by the seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(SAMPLES, 2, generator=generator, dtype=torch.float64)
    y = torch.rand(SAMPLES, 1, generator=generator, dtype=torch.float64)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


class SecondLayerContributions:
    """Records a1 (the second layer's input) and δ2 = ∂J/∂z2 during the torchbp model's steps."""

    def __init__(self, second_layer: torch.nn.Module):
        self.layer = second_layer
        second_layer.register_forward_hook(self._keep_input)
        second_layer.register_full_backward_hook(self._keep_delta)

    def _keep_input(self, module, inputs, output):
        self.a1 = inputs[0].detach()

    def _keep_delta(self, module, grad_inputs, grad_outputs):
        self.delta2 = grad_outputs[0].detach()

    def per_sample(self) -> torch.Tensor:
        """δ2,n a1,nᵀ for every sample n: shape (N, 1, 3)."""
        return self.delta2[:, :, None] * self.a1[:, None, :]


def log_contributions(trainer: LockstepTrainer, steps: int):
    contributions = SecondLayerContributions(trainer.hand_model[2])
    logged_steps = {0, steps // 10, steps // 2, max(steps - 1, 0)}

    def after_step(record: StepRecord) -> None:
        if record.step not in logged_steps or trainer.log is None:
            return
        per_sample = contributions.per_sample()
        total = per_sample.sum(0)
        full_gradient = trainer.hand_model[2].weight.grad
        error = (total - full_gradient).abs().max().item()
        trainer.log.difference("per_sample_sum_error", error, record.step)
        rows = torch.cat([per_sample[:, 0, :], total], dim=0)  # one row per sample, then Σ
        trainer.log.image("hand", "per_sample/W2_gradient_contributions", heat_map(rows.cpu().numpy()), record.step)

    return after_step


@experiment(
    "seed",
    "the derivation's 2-3-1 sigmoid network, 5 samples, ½ SSE, per-sample contributions to ∂J/∂W2",
    full_batch=True,
    steps=2000, lr=0.5, batch_size=None, dtype="float64",
)
def build(config: Config) -> Setup:
    x, y = samples(config.seed, config.torch_dtype, config.device)
    return Setup(
        model=network(config.seed, config.torch_dtype, config.device),
        loss_fn=HalfSumSquaredError(),
        batches=Minibatches(x, y, batch_size=None),
        watch=lambda trainer: log_contributions(trainer, config.steps),
    )
