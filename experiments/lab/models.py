"""The networks the experiments train."""

from __future__ import annotations

import itertools

import torch

from experiments.lab.registry import Config


def sigmoid_mlp(widths: tuple[int, ...], config: Config, bias: bool = True) -> torch.nn.Sequential:
    """Linear layers of the given widths, each followed by a sigmoid, initialised from ``config.seed``
    and placed in ``config``'s dtype and device: ``(2, 3, 1)`` is the derivation's 2-3-1 network."""
    torch.manual_seed(config.seed)
    layers = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(n_in, n_out, bias=bias), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers).to(dtype=config.torch_dtype, device=config.device)
