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

Every h_l is an output of the Function, so the tensors its backward reads
are either its inputs or its outputs, and the backward, made of
differentiable operations, can be differentiated again (a gradient arriving
at an intermediate h_l joins δ there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchbp.functions.base import HandDerivedFunction
from torchbp.functions.linear import linear_backward
from torchbp.functions.sigmoid import sigmoid_backward
from torchbp.functions.validation import check_floating_and_matching, check_linear_shapes

LINEAR, SIGMOID = "linear", "sigmoid"


def _params_per_layer(kinds: tuple[str, ...]) -> list[int]:
    """Index of each layer's first parameter in the flat parameter list (weight, bias per linear)."""
    starts, index = [], 0
    for kind in kinds:
        starts.append(index)
        index += 2 if kind == LINEAR else 0
    return starts


def _saved_outputs(kinds: tuple[str, ...]) -> list[bool]:
    """Which of h_0 … h_L the backward reads: a linear layer's input, a sigmoid's output.

    Layer l (counted from 0) reads h_l and writes h_{l+1}.
    """
    needed = [False] * (len(kinds) + 1)
    for l, kind in enumerate(kinds):
        if kind == LINEAR:
            needed[l] = True  # δᵀ h_l
        else:
            needed[l + 1] = True  # σ' from its own output
    return needed


class SequentialFunction(HandDerivedFunction):
    """h_L = f_L(… f_1(x)) for linear and sigmoid layers; see the module docstring.

    Called as ``SequentialFunction.apply(x, kinds, *params)`` with ``kinds`` a tuple
    of "linear" and "sigmoid" and ``params`` each linear layer's weight and bias
    (None without one), in order. Returns every h_1 … h_L.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, kinds: tuple[str, ...], *params):
        h, outputs = x, []
        for kind, start in zip(kinds, _params_per_layer(kinds)):
            if kind == LINEAR:
                W, b = params[start], params[start + 1]
                check_floating_and_matching("linear", input=h, weight=W, bias=b)
                check_linear_shapes(h, W, b)
                h = F.linear(h, W, b)
            else:
                h = torch.sigmoid(h)
            outputs.append(h)
        return tuple(outputs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, kinds, *params = inputs
        hs = (x, *output)
        needed = _saved_outputs(kinds)
        ctx.kinds = kinds
        need_x, _, *need_params = ctx.needs_input_grad
        starts = _params_per_layer(kinds)
        # Is a gradient wanted anywhere below layer l (its input, or an earlier parameter)?
        ctx.wanted_below = [need_x or any(need_params[: starts[l]]) for l in range(len(kinds))]
        ctx.starts = starts
        ctx.set_materialize_grads(False)  # most h_l receive no gradient; skip their zeros
        ctx.save_for_backward(*params, *(h if need else None for h, need in zip(hs, needed)))

    @staticmethod
    def backward(ctx, *grads):
        kinds = ctx.kinds
        saved = ctx.saved_tensors
        n_params = 2 * kinds.count(LINEAR)
        params, hs = saved[:n_params], saved[n_params:]
        need_x, _, *need_params = ctx.needs_input_grad
        starts, wanted_below = ctx.starts, ctx.wanted_below
        grad_params = [None] * n_params
        delta = None
        for l in reversed(range(len(kinds))):
            delta = _join(delta, grads[l])  # ∂J/∂h_{l+1}, from above and from outside
            if delta is None:
                continue
            if kinds[l] == SIGMOID:
                delta = sigmoid_backward(delta, hs[l + 1])
            else:
                W, b, start = params[starts[l]], params[starts[l] + 1], starts[l]
                delta, grad_params[start], grad_params[start + 1] = linear_backward(
                    delta, hs[l], W, wanted_below[l], need_params[start], b is not None and need_params[start + 1]
                )
            if not wanted_below[l]:
                break
        return (delta if need_x else None, None, *grad_params)


def _join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
