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
from typing import NamedTuple

import torch
import torch.nn.functional as F

import torchbp
from torchbp.per_sample import per_sample_grad_norms, per_sample_grads

# A peer's side of a case, made from (network, x, labels): a call that returns the per-sample gradients
# (one tensor per parameter, in the network's order) or the norms (one (N,) tensor).
Side = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Callable[[], list[torch.Tensor]]]


def installed(peer: str) -> bool:
    return importlib.util.find_spec(peer) is not None


def opacus_grads(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    from opacus import GradSampleModule

    model = GradSampleModule(network, loss_reduction="sum")

    def grads():
        for p in model.parameters():
            p.grad, p.grad_sample = None, None
        F.cross_entropy(model(x), labels, reduction="sum").backward()
        return [p.grad_sample for p in model.parameters()]

    return grads


def opacus_norms(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    model = GradSampleModuleFastGradientClipping(
        network, max_grad_norm=1.0, use_ghost_clipping=True, loss_reduction="sum"
    )

    def norms():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels, reduction="sum").backward()
        return [model.get_norm_sample()]

    return norms


def backpack_run(extension: str, result: Callable[[list[torch.nn.Parameter]], list[torch.Tensor]]) -> Side:
    """BackPACK's backward with ``extension``, then ``result`` of the parameters it wrote into."""

    def make(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
        from backpack import backpack, extend, extensions

        model, loss_fn = extend(network), extend(torch.nn.CrossEntropyLoss(reduction="sum"))

        def run():
            model.zero_grad(set_to_none=True)
            with backpack(getattr(extensions, extension)()):
                loss_fn(model(x), labels).backward()
            return result(list(model.parameters()))

        return run

    return make


class Peer(NamedTuple):
    module: str  # what to import
    names: dict[str, str]  # per kind ("grads", "norms"): what its side is called in the table
    sides: dict[str, Side]  # per kind: its side


PEERS = {
    "Opacus": Peer(
        "opacus",
        {"grads": "Opacus GradSampleModule", "norms": "Opacus ghost clipping"},
        {"grads": opacus_grads, "norms": opacus_norms},
    ),
    "BackPACK": Peer(
        "backpack",
        {"grads": "BackPACK BatchGrad", "norms": "BackPACK BatchL2Grad"},
        {
            "grads": backpack_run("BatchGrad", lambda ps: [p.grad_batch for p in ps]),
            "norms": backpack_run("BatchL2Grad", lambda ps: [sum(p.batch_l2 for p in ps).sqrt()]),  # Σ of ‖·‖²
        },
    ),
}
OURS = {"grads": "torchbp.per_sample_grads(out=)", "norms": "torchbp.per_sample_grad_norms"}  # per kind


def against(peer: str, kind: str, setup: Callable[[], tuple]):
    """The case's ``make``: torchbp's side and the peer's, for ``setup()``'s network, input and labels (its
    loss is the peers': summed cross-entropy), after checking once that both compute the same values."""

    def make():
        network, _, x, labels = setup()
        hand = torchbp.convert(copy.deepcopy(network))
        loss_fn = torchbp.nn.CrossEntropyLoss(reduction="sum")
        if kind == "grads":
            buffers = per_sample_grads(hand, loss_fn, x, labels)
            ours = lambda: list(per_sample_grads(hand, loss_fn, x, labels, out=buffers).values())  # noqa: E731
        else:
            ours = lambda: [per_sample_grad_norms(hand, loss_fn, x, labels)]  # noqa: E731
        theirs = PEERS[peer].sides[kind](network, x, labels)
        same_work(ours(), theirs(), f"{peer}'s {kind}")
        return ours, theirs

    return make


def same_work(ours: list[torch.Tensor], theirs: list[torch.Tensor], what: str) -> None:
    """Both sides compute the same values (to float32 rounding), so that the row times the same work."""
    if len(ours) != len(theirs):
        raise AssertionError(f"{what}: expected {len(ours)} tensors, got {len(theirs)}")
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what} differ: {m}")
