"""Per-sample gradients of CNNs against the libraries that compute them: Opacus and BackPACK.

Each case times torchbp against one peer on the same network, batch and loss (cross-entropy,
summed over the batch): per-sample gradients (torchbp's into reused buffers, ``out=``, as a
training loop keeps them, against Opacus's ``GradSampleModule`` and BackPACK's ``BatchGrad``,
which form theirs afresh on every backward), and per-sample gradient norms (against Opacus's
ghost clipping and BackPACK's ``BatchL2Grad``). A peer that is not installed is skipped, and
its row says so: ``pip install -e ".[bench]"`` installs both.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

import torchbp
from torchbp.per_sample import per_sample_grad_norms, per_sample_grads

Setup = Callable[[], tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]


def installed(peer: str) -> bool:
    return importlib.util.find_spec(peer) is not None


def digits_cnn(batch: int) -> Setup:
    """digits-cnn's network on ``batch`` of the digits."""

    def setup():
        from experiments.digits_cnn import small_cnn
        from experiments.lab.data import load_digits
        from experiments.lab.registry import Config

        pixels, labels = load_digits()
        network = small_cnn(Config(steps=1, lr=1e-3, batch_size=batch, dtype="float32"))
        return network, pixels[:batch].reshape(-1, 1, 8, 8).float(), labels[:batch]

    return setup


def wider_cnn(batch: int) -> Setup:
    """3 → 32 → 64 channels of 3×3 convolutions with ReLUs on 32×32 images, then a linear layer to 10 classes."""

    def setup():
        torch.manual_seed(0)
        network = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(64 * 32 * 32, 10),
        )
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        return network, images, torch.randint(0, 10, (batch,), generator=generator)

    return setup


def opacus_grads(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    from opacus import GradSampleModule

    model = GradSampleModule(network, loss_reduction="sum")

    def grads():
        for p in model.parameters():
            p.grad, p.grad_sample = None, None
        F.cross_entropy(model(x), labels, reduction="sum").backward()
        return [p.grad_sample for p in model.parameters()]

    return grads


def opacus_norms(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    model = GradSampleModuleFastGradientClipping(
        network, max_grad_norm=1.0, use_ghost_clipping=True, loss_reduction="sum"
    )

    def norms():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels, reduction="sum").backward()
        return model.get_norm_sample()

    return norms


def backpack_run(extension: str, read: str) -> Callable[..., Callable[[], object]]:
    def make(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
        from backpack import backpack, extend, extensions

        model, loss_fn = extend(network), extend(torch.nn.CrossEntropyLoss(reduction="sum"))

        def run():
            model.zero_grad(set_to_none=True)
            with backpack(getattr(extensions, extension)()):
                loss_fn(model(x), labels).backward()
            return [getattr(p, read) for p in model.parameters()]

        return run

    return make


# peer: (the module to import, what it is called in the table, its per-sample gradients, its norms)
PEERS = {
    "Opacus": ("opacus", "Opacus GradSampleModule", opacus_grads, "Opacus ghost clipping", opacus_norms),
    "BackPACK": (
        "backpack",
        "BackPACK BatchGrad",
        backpack_run("BatchGrad", "grad_batch"),
        "BackPACK BatchL2Grad",
        backpack_run("BatchL2Grad", "batch_l2"),
    ),
}


def per_sample_grads_against(peer: str, setup: Setup):
    def make():
        network, x, labels = setup()
        hand = torchbp.convert(copy.deepcopy(network))
        loss_fn = torchbp.nn.CrossEntropyLoss(reduction="sum")
        buffers = per_sample_grads(hand, loss_fn, x, labels)
        theirs = PEERS[peer][2](network, x, labels)
        same_work(list(buffers.values()), theirs(), f"{peer}'s per-sample gradients")
        return (lambda: per_sample_grads(hand, loss_fn, x, labels, out=buffers)), theirs

    return make


def norms_against(peer: str, setup: Setup):
    def make():
        network, x, labels = setup()
        hand = torchbp.convert(copy.deepcopy(network))
        loss_fn = torchbp.nn.CrossEntropyLoss(reduction="sum")
        theirs = PEERS[peer][4](network, x, labels)
        norms = theirs()
        same_work(
            [per_sample_grad_norms(hand, loss_fn, x, labels)],
            [sum(norms) ** 0.5 if isinstance(norms, list) else norms],
            f"{peer}'s norms",
        )
        return (lambda: per_sample_grad_norms(hand, loss_fn, x, labels)), theirs

    return make


def same_work(ours: list[torch.Tensor], theirs: list[torch.Tensor], what: str) -> None:
    """Both sides compute the same values (to float32 rounding), so that the row times the same work."""
    if len(ours) != len(theirs):
        raise AssertionError(f"{what}: expected {len(ours)} tensors, got {len(theirs)}")
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what} differ: {m}")


NETWORKS = {
    "digits-cnn, batch 64": digits_cnn(64),
    "digits-cnn, batch 256": digits_cnn(256),
    "wider CNN (3→32→64 channels, 32×32), batch 64": wider_cnn(64),
}
