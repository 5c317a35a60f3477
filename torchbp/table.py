"""What a layer file declares, and the one table the declarations fill.

Each file in ``torchbp/layers/`` ends with one ``register(Layer(...))``: its native
class, its drop-in module, its autograd Function, its functional form, and where
it has them its step in the fused chain and its per-sample rule. ``torchbp.layers``
imports every file in its folder, and ``torchbp.layers.LAYERS`` is the table they
registered into; ``torchbp.nn``, ``torchbp.functional``, ``torchbp.functions``,
``convert``, ``to_native``, ``fuse``, ``check_model``, the lockstep trainer and
per-sample gradients read it, and nothing else lists layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch


def no_arguments(module: torch.nn.Module) -> tuple[Any, ...]:
    """An activation's arguments after its input: none."""
    return ()


class Step(NamedTuple):
    """A layer's part in the fused chain (:func:`torchbp.fuse`): how one Function runs it among others.

    The chain calls ``forward(h, *arguments)`` for the next h, and in the backward
    ``backward(δ, h, *arguments, *needs)``, with δ = ∂J/∂(its output), h the tensor it
    ``reads`` ("input" or "output"; None: neither) and ``needs`` the flags (its input,
    *its tensor arguments); that returns (∂J/∂(its input) or None, *the tensor arguments'
    gradients): the same backward its own Function calls. A step without arguments
    (an activation) has the backward ``backward(δ, h)``, which returns ∂J/∂(its input).
    A step takes ``arity`` arguments after its input, of which those at ``constants``
    are not tensors and come last (a loss's reduction); ``arguments(module)`` gives a
    module's (a Linear's weight and bias; for a loss, those after the target), or None
    where that module cannot run fused.
    """

    kind: str  # its name in a chain's kinds, such as "linear"
    forward: Callable[..., torch.Tensor]
    backward: Callable[..., Any]  # see above: (∂J/∂(its input), *the tensor arguments' gradients), or ∂J/∂(its input)
    reads: str | None  # "input" or "output"
    arity: int = 0
    arguments: Callable[[Any], tuple[Any, ...] | None] = no_arguments
    loss: bool = False  # ends a chain (only constant scales may follow); its first argument is the target
    constants: tuple[int, ...] = ()  # which of its arguments are not tensors (a loss's reduction): the last ones


class PerSampleRule(Protocol):
    """A layer's per-sample gradients (torchbp.per_sample), from one call's input a_prev and upstream δ.

    What a call records is, by default, a_prev = its first input and δ = ∂J/∂(its output), both with the
    samples first. A rule may define ``recorded(module, args, kwargs, output)`` returning (a_prev, [(z, axis),
    ...]) instead: what to keep of the call as a_prev (a tensor, or a tuple whose first item is a tensor,
    samples first), and the output tensors z whose δ it needs, each with its sample axis (δ is moved to put
    it first); it then receives δ as a tuple, one per z, where it names more than one. A rule may define
    ``refusal(module)``, returning why that module, as it stands, has no per-sample gradients (a batch norm
    in training mode), or None; it is asked before any forward.
    """

    def grads(self, module: Any, a_prev: Any, delta: Any, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{parameter name: (N, *shape)} for the parameters that require grad, into ``out``'s tensors where given."""
        ...

    def norms_squared(self, module: Any, a_prev: Any, delta: Any) -> torch.Tensor:
        """(N,): each sample's squared gradient norm summed over the layer's parameters."""
        ...


class Layer(NamedTuple):
    """One hand-derived layer, all torchbp knows of it: an entry of ``torchbp.layers.LAYERS``."""

    native: type[torch.nn.Module]  # the torch.nn class it replaces
    hand: type[torch.nn.Module]  # its torchbp class: a subclass of native with its own forward
    function: type[torch.autograd.Function]  # the autograd Function holding its backward
    functional: Callable[..., Any]  # its functional form, with torch.nn.functional's signature
    step: Step | None = None  # its step in the fused chain, if it has one
    per_sample: PerSampleRule | None = None  # its per-sample rule, if it has parameters
    runs: Callable[[Any], bool] | None = None  # which instances it can run, where not all (convert leaves the rest)


class Operation(NamedTuple):
    """A hand-derived operation without a module of its own (attention, which MultiheadAttention uses): an entry
    of ``torchbp.layers.OPERATIONS``, named in ``torchbp.functional`` and ``torchbp.functions`` as layers are."""

    function: type[torch.autograd.Function]  # the autograd Function holding its backward
    functional: Callable[..., torch.Tensor]  # its functional form, with torch.nn.functional's signature


REGISTERED: list[Layer] = []  # in the order the files were imported
REGISTERED_OPERATIONS: list[Operation] = []


def register_operation(operation: Operation) -> Operation:
    """Enter ``operation``; a file of ``torchbp/layers/`` whose operation has no module calls this once."""
    REGISTERED_OPERATIONS.append(operation)
    return operation


def register(layer: Layer) -> Layer:
    """Enter ``layer`` in the table; each layer file calls this once, at its end."""
    if any(entry.native is layer.native for entry in REGISTERED):
        raise ValueError(f"{layer.native.__name__} is registered twice")
    step = layer.step
    if step is not None and step.constants != tuple(range(step.arity - len(step.constants), step.arity)):
        raise ValueError(f"{layer.native.__name__}'s step: expected its constants last, got them at {step.constants}")
    REGISTERED.append(layer)
    return layer
