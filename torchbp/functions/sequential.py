"""A chain of linear and sigmoid layers as one Function: the derivation run as one algorithm.

Forward: h_0 = x, and h_l = f_l(h_{l-1}) for each layer l = 1..L, with f_l a
linear layer (z = h Wᵀ + b) or a sigmoid (a = σ(z)).

Backward, from δ = ∂J/∂h_L down to the input, layer after layer:

- sigmoid:  δ ← δ ⊙ σ'(z) = δ ⊙ (1 − a) a          (sigmoid_backward)
- linear:   ∂J/∂W = δᵀ h_{l-1},  ∂J/∂b = Σ_n δ_n,  δ ← δ W   (linear_backward)

so across a linear layer and the sigmoid before it, δ_prev = (δ W) ⊙ σ'(z_prev).
The per-layer formulas are the layer files' own; this file only orders them.
One autograd node instead of one per layer is what makes small networks
fast: for them the cost of a node exceeds the arithmetic.

Every h_l the backward reads is returned by the Function, so the tensors its
backward reads are its inputs or its outputs, and the backward, made of
differentiable operations, can be differentiated again (a gradient arriving
at a returned h_l joins δ there).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from torchbp.functions.base import HandDerivedFunction
from torchbp.functions.linear import linear_backward
from torchbp.functions.sigmoid import sigmoid_backward
from torchbp.functions.validation import check_floating_and_matching, check_linear_shapes

LINEAR, SIGMOID = "linear", "sigmoid"


class Plan(NamedTuple):
    """What a chain of layer kinds implies for the forward and the backward."""

    starts: tuple[int, ...]  # each layer's first parameter in the flat list (weight, bias per linear)
    read: tuple[bool, ...]  # which of h_0 … h_L the backward reads
    returned: tuple[int, ...]  # which of h_1 … h_L the Function returns: those read, and h_L


def plan(kinds: tuple[str, ...]) -> Plan:
    starts, index = [], 0
    for kind in kinds:
        starts.append(index)
        index += 2 if kind == LINEAR else 0
    # Layer l (counted from 0) reads h_l and writes h_{l+1}: a linear layer reads its input
    # (δᵀ h_l), a sigmoid its own output (σ' = (1 − a) a).
    read = [False] * (len(kinds) + 1)
    for l, kind in enumerate(kinds):
        read[l if kind == LINEAR else l + 1] = True
    returned = tuple(l for l in range(1, len(kinds) + 1) if read[l] or l == len(kinds))
    return Plan(tuple(starts), tuple(read), returned)


class SequentialFunction(HandDerivedFunction):
    """h_L = f_L(… f_1(x)) for linear and sigmoid layers; see the module docstring.

    Called as ``SequentialFunction.apply(x, kinds, *params)`` with ``kinds`` a tuple
    of "linear" and "sigmoid" and ``params`` each linear layer's weight and bias
    (None without one), in order. Returns the h_l its backward reads, then h_L
    last (``plan(kinds).returned`` lists which).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, kinds: tuple[str, ...], *params):
        chain = plan(kinds)
        hs = [x]
        for kind, start in zip(kinds, chain.starts):
            h = hs[-1]
            if kind == LINEAR:
                W, b = params[start], params[start + 1]
                check_floating_and_matching("linear", input=h, weight=W, bias=b)
                check_linear_shapes(h, W, b)
                hs.append(F.linear(h, W, b))
            else:
                hs.append(torch.sigmoid(h))
        return tuple(hs[l] for l in chain.returned)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, kinds, *params = inputs
        chain = plan(kinds)
        hs = [x] + [None] * len(kinds)
        for l, h in zip(chain.returned, output):
            hs[l] = h
        need_x, _, *need_params = ctx.needs_input_grad
        # Is a gradient wanted anywhere below layer l (its input, or an earlier parameter)?
        ctx.wanted_below = [need_x or any(need_params[: chain.starts[l]]) for l in range(len(kinds))]
        ctx.kinds = kinds
        ctx.set_materialize_grads(False)  # the h_l returned for the backward's sake get no gradient, mostly
        ctx.save_for_backward(*params, *(h if read else None for h, read in zip(hs, chain.read)))

    @staticmethod
    def backward(ctx, *grads):
        kinds = ctx.kinds
        chain = plan(kinds)
        saved = ctx.saved_tensors
        n_params = len(saved) - len(kinds) - 1
        params, hs = saved[:n_params], saved[n_params:]
        need_x, _, *need_params = ctx.needs_input_grad
        arriving = dict(zip(chain.returned, grads))  # ∂J/∂h_l from outside the chain
        grad_params = [None] * n_params
        delta = None
        for l in reversed(range(len(kinds))):
            delta = _join(delta, arriving.get(l + 1))  # ∂J/∂h_{l+1}, from above and from outside
            if delta is None:
                continue
            if kinds[l] == SIGMOID:
                delta = sigmoid_backward(delta, hs[l + 1])
            else:
                start = chain.starts[l]
                W, b = params[start], params[start + 1]
                delta, grad_params[start], grad_params[start + 1] = linear_backward(
                    delta, hs[l], W, ctx.wanted_below[l], need_params[start], b is not None and need_params[start + 1]
                )
            if not ctx.wanted_below[l]:
                break
        return (delta if need_x else None, None, *grad_params)


def _join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
