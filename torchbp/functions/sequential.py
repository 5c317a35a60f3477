"""A chain of linear layers and activations, ending perhaps in the squared-error loss, as one Function:
the derivation run as one algorithm.

Forward: h_0 = x, and h_l = f_l(h_{l-1}) for each step l = 1..L, with f_l a linear
layer (z = h Wᵀ + b), an activation (a = σ(z), tanh(z) or max(z, 0)), the loss
ℓ = reduce((h − y)²) (then nothing but scales), or a constant scale c h (the ½ of
J = ½ Σ (y − ŷ)²).

Backward, from δ = ∂J/∂h_L down to the input, step after step:

- scale:    δ ← c δ
- loss:     δ ← (h − y) · 2/N ⊙ δ,  ∂J/∂y = −δ       (mse_loss_backward)
- sigmoid:  δ ← δ ⊙ σ'(z) = δ ⊙ (1 − a) a          (sigmoid_backward; tanh_backward, relu_backward alike)
- linear:   ∂J/∂W = δᵀ h_{l-1},  ∂J/∂b = Σ_n δ_n,  δ ← δ W   (linear_backward)

so across a linear layer and the sigmoid before it, δ_prev = (δ W) ⊙ σ'(z_prev).
The layers' formulas, forward and backward, are the layer files' own; this file
orders them. One autograd node instead of one per layer is what makes small
networks fast: for them the cost of a node exceeds the arithmetic. Every h_l the
backward reads is returned, so that the backward, made of differentiable
operations, can be differentiated again (a gradient arriving at one joins δ).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from torchbp.functions.base import HandDerivedFunction
from torchbp.functions.linear import LinearFunction, linear_backward
from torchbp.functions.mse_loss import MSELossFunction, mse_loss_backward
from torchbp.functions.relu import ReLUFunction, relu_backward
from torchbp.functions.sigmoid import SigmoidFunction, sigmoid_backward
from torchbp.functions.tanh import TanhFunction, tanh_backward
from torchbp.functions.validation import check_scale

LINEAR, SIGMOID, TANH, RELU, MSE_LOSS, SCALE = "linear", "sigmoid", "tanh", "relu", "mse_loss", "scale"


def scale(h: torch.Tensor, c: float) -> torch.Tensor:
    """c h, for a constant c: native torch's ``c * h``, to the bit."""
    check_scale(c)
    return h * c


# Each step's forward (a layer's is its Function's own, checks included), and its arguments after
# its input, of which the constants (not tensors) are kept apart from the saved tensors.
FORWARD = {LINEAR: LinearFunction.forward, SIGMOID: SigmoidFunction.forward, TANH: TanhFunction.forward,
           RELU: ReLUFunction.forward, MSE_LOSS: MSELossFunction.forward, SCALE: scale}
ARGUMENTS = {LINEAR: ("weight", "bias"), SIGMOID: (), TANH: (), RELU: (), MSE_LOSS: ("target", "reduction"),
             SCALE: ("c",)}
# The activations, whose backward reads their own output: δ ← δ ⊙ f'(z) from a = f(z).
ACTIVATION_BACKWARD = {SIGMOID: sigmoid_backward, TANH: tanh_backward, RELU: relu_backward}
CONSTANTS = {"reduction", "c"}


class Plan(NamedTuple):
    """What a chain of step kinds implies for the forward and the backward."""

    kinds: tuple[str, ...]
    steps: tuple[tuple, ...]  # each step's (forward, its arguments' slice of the flat list)
    starts: tuple[int, ...]  # each step's first argument in the flat list
    constants: tuple[int, ...]  # where in the flat list the arguments that are not tensors are
    saved: tuple[int | None, ...]  # for h_0 … h_L: where in (x, *returned) the backward reads it, or None
    returned: tuple[int, ...]  # which of h_1 … h_L the Function returns: those read, and h_L
    arriving: tuple[int | None, ...]  # for h_0 … h_L: where its gradient is among the outputs' gradients


class SequentialFunction(HandDerivedFunction):
    """h_L = f_L(… f_1(x)) for linear layers, activations, a loss and scales; see the module docstring.

    Called as ``SequentialFunction.apply(x, kinds, *args)`` with ``kinds`` a tuple of
    "linear", "sigmoid", "tanh", "relu", "mse_loss" and "scale", and ``args`` each step's arguments
    after its input, in order, as its own Function takes them: a linear layer's
    weight and bias (None without one), the loss's target and reduction, a scale's
    constant. Returns the h_l its backward reads, then h_L last (``plan(kinds).returned``).
    Ending in the loss (and a scale), one node computes J itself: what :func:`torchbp.fuse_loss`
    builds, for the smallest networks the fastest path.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, kinds: tuple[str, ...], *args):
        chain = plan(kinds)
        hs = [x]
        for forward, arguments in chain.steps:
            hs.append(forward(hs[-1], *args[arguments]))
        return tuple([hs[l] for l in chain.returned])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, kinds, *args = inputs
        chain = plan(kinds)
        ctx.chain, ctx.constants = chain, {i: args[i] for i in chain.constants}
        for i in chain.constants:
            args[i] = None  # not a tensor: kept on ctx, apart from the saved tensors
        ctx.set_materialize_grads(False)  # the h_l returned for the backward's sake get no gradient, mostly
        x_and_output = (x, *output)
        ctx.save_for_backward(*args, *[None if i is None else x_and_output[i] for i in chain.saved])

    @staticmethod
    def backward(ctx, *grads):
        chain, constants, needs = ctx.chain, ctx.constants, ctx.needs_input_grad
        kinds, starts, arriving = chain.kinds, chain.starts, chain.arriving
        saved = ctx.saved_tensors
        args, hs = saved[: -len(kinds) - 1], saved[-len(kinds) - 1 :]
        # needs is (x, kinds, *args): the lowest argument whose gradient is wanted, x counted as -2.
        # A gradient is wanted below step l while lowest < starts[l] (δ W of a linear layer only then);
        # past that the backward stops.
        lowest = needs.index(True) - 2
        grad_args = [None] * len(args)
        delta = None
        for l in reversed(range(len(kinds))):
            if arriving[l + 1] is not None:  # ∂J/∂h_{l+1} from outside the chain joins the one from above
                delta = _join(delta, grads[arriving[l + 1]])
            if delta is None:
                continue
            i, kind = starts[l], kinds[l]
            if kind in ACTIVATION_BACKWARD:
                delta = ACTIVATION_BACKWARD[kind](delta, hs[l + 1])
            elif kind == LINEAR:
                delta, grad_args[i], grad_args[i + 1] = linear_backward(
                    delta, hs[l], args[i], lowest < i, needs[i + 2], needs[i + 3]
                )
            elif kind == MSE_LOSS:
                delta, grad_args[i] = mse_loss_backward(
                    delta, hs[l], args[i], constants[i + 1], lowest < i, needs[i + 2]
                )
            else:
                delta = delta * constants[i]  # c δ
            if lowest >= i:
                break
        return (delta if needs[0] else None, None, *grad_args)


def cached_while_eager(function):
    """``functools.cache`` of ``function``, except while the compiler traces: it warns about caches."""
    cached = functools.cache(function)
    return functools.wraps(function)(lambda *args: function(*args) if torch.compiler.is_compiling() else cached(*args))


@cached_while_eager
def plan(kinds: tuple[str, ...]) -> Plan:
    after_loss = kinds[kinds.index(MSE_LOSS) + 1 :] if MSE_LOSS in kinds else ()
    if any(kind not in ARGUMENTS for kind in kinds) or any(kind != SCALE for kind in after_loss):
        raise ValueError(f"expected steps of {tuple(ARGUMENTS)}, and after {MSE_LOSS!r} only {SCALE!r}; got {kinds}")
    names = [name for kind in kinds for name in ARGUMENTS[kind]]
    starts = [sum(len(ARGUMENTS[kind]) for kind in kinds[:l]) for l in range(len(kinds))]
    steps = tuple((FORWARD[kind], slice(start, start + len(ARGUMENTS[kind]))) for kind, start in zip(kinds, starts))
    constants = tuple(i for i, name in enumerate(names) if name in CONSTANTS)
    # Step l (counted from 0) reads h_l and writes h_{l+1}: a linear layer and the loss read their
    # input (δᵀ h_l, h_l − y), an activation its own output (σ' = (1 − a) a), a scale nothing.
    read = [False] * (len(kinds) + 1)
    for l, kind in enumerate(kinds):
        if kind != SCALE:
            read[l + 1 if kind in ACTIVATION_BACKWARD else l] = True
    returned = tuple(l for l in range(1, len(kinds) + 1) if read[l] or l == len(kinds))
    arriving = tuple(returned.index(l) if l in returned else None for l in range(len(kinds) + 1))
    saved = tuple((0 if l == 0 else arriving[l] + 1) if read[l] else None for l in range(len(kinds) + 1))
    return Plan(kinds, steps, tuple(starts), constants, saved, returned, arriving)


def _join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
