"""The derivation's network: 2 inputs, 3 sigmoid hidden units, 1 sigmoid output, no biases.

Five fixed training samples, the cost J = ½ Σ (y − ŷ)², full-batch gradient
descent, float64. Beside the loss curves it logs how each sample contributes
to the second layer's weight gradient,

    ∂J/∂W2 = Σ_n δ2,n a1,nᵀ        (each term 1×3, W2's shape in torch's (out, in) convention)

as a heat map: one row per sample and a last row with their sum, which is the
full gradient (checked at every logged step). The terms come from
torchbp.PerSampleGradients, recorded during the training step's own backward.
"""

from __future__ import annotations

import numpy as np
import torch

from experiments.minibatches import Minibatches
from experiments.models import sigmoid_mlp
from experiments.registry import Config, Setup, experiment
from torchbp.lockstep import LockstepTrainer, StepRecord

SAMPLES = 5


class HalfSumSquaredError(torch.nn.Module):
    """J = ½ Σ (y − ŷ)², whose gradient with respect to ŷ is ŷ − y."""

    reduction = "sum"  # a sum over samples: per-sample gradients add up to the full gradient

    def __init__(self):
        super().__init__()
        self.sum_squared_error = torch.nn.MSELoss(reduction="sum")

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.sum_squared_error(y_hat, y)


def network(config: Config) -> torch.nn.Sequential:
    """The derivation's 2-3-1 sigmoid network, without biases."""
    return sigmoid_mlp((2, 3, 1), config, bias=False)


def samples(seed: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Five inputs in [0, 1]² and five targets in [0, 1], fixed by the seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(SAMPLES, 2, generator=generator, dtype=torch.float64)
    y = torch.rand(SAMPLES, 1, generator=generator, dtype=torch.float64)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


def heat_map(values: np.ndarray, cell: int = 24) -> np.ndarray:
    """Render a 2-D array as an (H, W, 3) uint8 image for TensorBoard: red positive, blue negative, white zero.

    The colour scale is symmetric around zero and set by the largest |value|,
    so cells compare by colour within one image. A one-pixel grey grid
    separates the cells.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = np.abs(values).max() or 1.0
    t = np.clip(values / scale, -1.0, 1.0)
    red = np.where(t < 0, 1 + t, 1.0)
    green = 1 - np.abs(t)
    blue = np.where(t > 0, 1 - t, 1.0)
    rgb = np.stack([red, green, blue], axis=-1)
    image = np.kron(rgb, np.ones((cell, cell, 1)))
    image[::cell, :, :] = 0.6
    image[:, ::cell, :] = 0.6
    return (image * 255).round().astype(np.uint8)


def log_contributions(trainer: LockstepTrainer):
    """After each step that recorded per-sample gradients: δ2,n a1,nᵀ as a heat map, and their sum's distance
    from the full gradient ∂J/∂W2."""

    def after_step(record: StepRecord) -> None:
        if record.per_sample is None or trainer.log is None:
            return
        per_sample = record.per_sample.grads()["2.weight"]  # (5, 1, 3): one W2-shaped term per sample
        total = per_sample.sum(0)
        error = (total - trainer.hand_model[2].weight.grad).abs().max().item()
        trainer.log.match("per_sample_sum_error", error, record.step)
        rows = torch.cat([per_sample[:, 0, :], total], dim=0)  # one row per sample, then Σ
        trainer.log.image("hand", trainer.log.tag("per_sample", "W2_gradient_contributions"), heat_map(rows.cpu().numpy()), record.step)

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
        model=network(config),
        loss_fn=HalfSumSquaredError(),
        batches=Minibatches(x, y, batch_size=None),
        per_sample_every=max(config.steps // 4, 1),
        watch=log_contributions,
    )
