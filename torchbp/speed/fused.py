"""The fused chain: a chain of layers, ending perhaps in a loss and constant scales, as one Function.

Forward: h_0 = x, and h_l = f_l(h_{l-1}) for each step l = 1..L, with f_l a layer
that has a step in the table (a linear layer, an activation, the squared-error
loss, then nothing but scales) or a constant scale c h (the ½ of J = ½ Σ (y − ŷ)²).

Backward, from δ = ∂J/∂h_L down to the input, step after step, each by its layer's
own backward (its :class:`torchbp.table.Step`):

- scale:    δ ← c δ
- loss:     δ ← (h − y) · 2/N ⊙ δ,  ∂J/∂y = −δ
- sigmoid:  δ ← δ ⊙ σ'(z) = δ ⊙ (1 − a) a     (tanh and ReLU alike, each with its derivative)
- linear:   ∂J/∂W = δᵀ h_{l-1},  ∂J/∂b = Σ_n δ_n,  δ ← δ W

so across a linear layer and the sigmoid before it, δ_prev = (δ W) ⊙ σ'(z_prev).
This file only orders the layers' formulas. Every h_l the backward reads is
returned, so that the backward, made of differentiable operations, can be
differentiated again (a gradient arriving at one joins δ).

Why it exists: one autograd node instead of one per layer, for small networks
where a node costs more than its arithmetic. On the 2-core CPU machine (torch
2.13.0), a training step of the derivation's 2-3-1 network takes 1.46× native
autograd's time per layer, 1.30× through :class:`Sequential` and 1.17× through
:class:`FusedLoss` (network and loss as one node); on the mid MLP (3×256, batch 64)
1.21× per layer against 1.11× fused (``python -m experiments.bench``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.nn.modules import module as module_hooks

from torchbp import autocast
from torchbp.hand_derived import HandDerivedFunction, HandDerivedModule
from torchbp.layers import LAYERS
from torchbp.table import Step
from torchbp.validation import validate_scale


def scale(h: torch.Tensor, c: float) -> torch.Tensor:
    """c h, for a constant c: native torch's ``c * h``, to the bit."""
    validate_scale(c)
    return h * c


def scale_backward(delta: torch.Tensor, h: None, c: float, need_h: bool) -> tuple[torch.Tensor]:
    return (delta * c,)  # c δ


SCALE = Step("scale", scale, scale_backward, reads=None, arity=1, constants=(0,))
STEPS: dict[str, Step] = {layer.step.kind: layer.step for layer in LAYERS if layer.step is not None}
STEPS[SCALE.kind] = SCALE


class Plan(NamedTuple):
    """What a chain of step kinds implies for the forward and the backward."""

    steps: tuple[Step, ...]
    forwards: tuple[tuple[Callable[..., torch.Tensor], slice], ...]  # each step's forward and its arguments' slice
    backwards: tuple[tuple[Callable[..., Any], int, int, int, slice, slice, slice, int | None], ...]  # last first
    constants: tuple[int, ...]  # where in the flat list the arguments that are not tensors are
    saved: tuple[int | None, ...]  # for h_0 … h_L: where in (x, *returned) the backward reads it, or None
    returned: tuple[int, ...]  # which of h_1 … h_L the Function returns: those read, and h_L


class SequentialFunction(HandDerivedFunction):
    """h_L = f_L(… f_1(x)) for layers with a fused step, a loss and scales; see the module docstring.

    Called as ``SequentialFunction.apply(x, kinds, *args)`` with ``kinds`` a tuple of
    step kinds ("linear", "sigmoid", "tanh", "relu", "mse_loss", "scale", …: ``STEPS``)
    and ``args`` each step's arguments after its input, in order, as its own Function
    takes them: a linear layer's weight and bias (None without one), the loss's target
    and reduction, a scale's constant. Returns the h_l its backward reads, then h_L
    last (``plan(kinds).returned``). Ending in the loss (and a scale), one node computes
    J itself: what :func:`torchbp.fuse_loss` builds, for the smallest networks the fastest path.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, kinds: tuple[str, ...], *args: Any) -> tuple[torch.Tensor, ...]:
        chain = plan(kinds)
        hs = [x]
        for forward, arguments in chain.forwards:
            hs.append(forward(hs[-1], *args[arguments]))
        return tuple([hs[l] for l in chain.returned])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, kinds, *args = inputs
        chain = plan(kinds)
        # What is not a tensor (a reduction, a scale's constant) is kept on ctx, apart from the saved tensors.
        ctx.chain, ctx.constants = chain, {i: args[i] for i in chain.constants}
        for i in chain.constants:
            args[i] = None
        ctx.set_materialize_grads(False)  # the h_l returned for the backward's sake get no gradient, mostly
        x_and_output = (x, *output)
        ctx.save_for_backward(*args, *[None if i is None else x_and_output[i] for i in chain.saved])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        chain, constants, needs = ctx.chain, ctx.constants, ctx.needs_input_grad
        saved = ctx.saved_tensors
        length = len(chain.steps)
        args, hs = list(saved[: -length - 1]), saved[-length - 1 :]
        for i, constant in constants.items():
            args[i] = constant
        # needs is (x, kinds, *args): the lowest argument whose gradient is wanted, x counted as -2.
        # A gradient is wanted below a step while lowest < i, its first argument (δ W of a linear layer only
        # then); past that the backward stops.
        lowest = needs.index(True) - 2
        grad_args: list[torch.Tensor | None] = [None] * len(args)
        delta = None
        # From the last step down, step l's backward, the h it reads (h_l or h_{l+1}; a scale is given one it
        # does not read), its first argument, how it is called (FORMS), the slices of args of its arguments and
        # of its tensor arguments, that of needs of their flags, and where ∂J/∂h_{l+1} arrives from outside the
        # chain, if it does.
        for backward, read, i, form, arguments, tensors, flags, arrives in chain.backwards:
            if arrives is not None and grads[arrives] is not None:  # it joins the gradient from above
                delta = grads[arrives] if delta is None else delta + grads[arrives]
            if delta is None:
                continue
            h, need_h = hs[read], lowest < i
            if form == ACTIVATION:  # δ ← δ ⊙ f'(z)
                delta = backward(delta, h)
            elif form == TWO_TENSORS:  # a linear layer: (δ W, δᵀ h, Σ_n δ_n)
                delta, grad_args[i], grad_args[i + 1] = backward(
                    delta, h, args[i], args[i + 1], need_h, needs[i + 2], needs[i + 3]
                )
            elif form == TENSOR_AND_CONSTANT:  # a loss: its target and reduction
                delta, grad_args[i] = backward(delta, h, args[i], args[i + 1], need_h, needs[i + 2])
            elif form == CONSTANT:  # a scale
                (delta,) = backward(delta, h, args[i], need_h)
            else:
                delta, *grad_args[tensors] = backward(delta, h, *args[arguments], need_h, *needs[flags])
            if lowest >= i:
                break
        return (delta if needs[0] else None, None, *grad_args)


# How the backward calls a step, by its arguments after its input. The common forms are spelled out with a
# fixed count of arguments, which CPython calls inline: about 0.4 µs a step less than the general form's
# ``*args[arguments], *needs[flags]``: 8 % of the 2-3-1 network's fused backward (paired, measured).
ACTIVATION = 0  # none: backward(δ, h) -> ∂J/∂h
TWO_TENSORS = 1  # backward(δ, h, a1, a2, need_h, need_a1, need_a2) -> (∂J/∂h, ∂J/∂a1, ∂J/∂a2)
TENSOR_AND_CONSTANT = 2  # backward(δ, h, a1, c, need_h, need_a1) -> (∂J/∂h, ∂J/∂a1)
CONSTANT = 3  # backward(δ, h, c, need_h) -> (∂J/∂h,)
GENERAL = 4  # any other count: backward(δ, h, *arguments, need_h, *needs) -> (∂J/∂h, *the tensors' gradients)
FORMS = {(0, 0): ACTIVATION, (2, 0): TWO_TENSORS, (1, 1): TENSOR_AND_CONSTANT, (0, 1): CONSTANT}


def form_of(step: Step) -> int:
    """How the backward calls ``step``: its form in FORMS by (tensor arguments, constants), else GENERAL."""
    constants = len(step.constants)
    return FORMS.get((step.arity - constants, constants), GENERAL)


_PLANS: dict[tuple[str, ...], Plan] = {}


def plan(kinds: tuple[str, ...]) -> Plan:
    """The plan of a chain of kinds, made once and kept; while the compiler traces, made afresh (it would guard
    on what the store holds, and warns about caches)."""
    if torch.compiler.is_compiling():
        return make_plan(kinds)
    chain = _PLANS.get(kinds)
    if chain is None:
        chain = _PLANS[kinds] = make_plan(kinds)
    return chain


def make_plan(kinds: tuple[str, ...]) -> Plan:
    ends = [l for l, kind in enumerate(kinds) if kind in STEPS and STEPS[kind].loss]
    after_loss = kinds[ends[0] + 1 :] if ends else ()
    if any(kind not in STEPS for kind in kinds) or any(kind != SCALE.kind for kind in after_loss):
        raise ValueError(f"expected steps of {tuple(STEPS)}, and after a loss only {SCALE.kind!r}; got {kinds}")
    steps = tuple(STEPS[kind] for kind in kinds)
    starts = tuple(sum(step.arity for step in steps[:l]) for l in range(len(steps)))
    constants = tuple(start + c for step, start in zip(steps, starts) for c in step.constants)
    # Step l (counted from 0) reads h_l (its input: δᵀ h_l, h_l − y) or h_{l+1} (its output: σ' = (1 − a) a),
    # or neither (a scale), and writes h_{l+1}.
    read = [False] * (len(kinds) + 1)
    for l, step in enumerate(steps):
        if step.reads is not None:
            read[l + 1 if step.reads == "output" else l] = True
    returned = tuple(l for l in range(1, len(kinds) + 1) if read[l] or l == len(kinds))
    # for h_0 … h_L: where its gradient is among the outputs' gradients (those it returns), or None
    arriving = tuple(returned.index(l) if l in returned else None for l in range(len(kinds) + 1))
    saved = tuple(((0 if l == 0 else arriving[l] + 1) if read[l] else None) for l in range(len(kinds) + 1))  # type: ignore[operator]
    slices = tuple(slice(start, start + step.arity) for step, start in zip(steps, starts))
    forwards = tuple((step.forward, arguments) for step, arguments in zip(steps, slices))
    backwards = tuple(
        (
            step.backward,
            l + 1 if step.reads == "output" else l,
            start,
            form_of(step),
            arguments,
            slice(start, arguments.stop - len(step.constants)),  # its tensor arguments
            slice(start + 2, arguments.stop - len(step.constants) + 2),  # their flags in needs
            arriving[l + 1],
        )
        for l, (step, start, arguments) in reversed(list(enumerate(zip(steps, starts, slices))))
    )
    return Plan(steps, forwards, backwards, constants, saved, returned)


# The torchbp layers a chain runs, and the losses it ends in. A native MSELoss broadcasts its target,
# so it runs as itself (torchbp.fuse_loss converts it).
_FUSABLE = {layer.hand: layer.step for layer in LAYERS if layer.step is not None and not layer.step.loss}
_FUSABLE_LOSSES = {layer.hand: layer.step for layer in LAYERS if layer.step is not None and layer.step.loss}


class Sequential(HandDerivedModule, torch.nn.Sequential):
    r"""torch.nn.Sequential that runs a chain of torchbp layers (Linear and activations) as one Function.

    The whole chain's backward is :class:`SequentialFunction`: the derivation run
    layer by layer as one algorithm, with one autograd node instead of one per
    layer, which is what small networks spend their time on. Children, parameters
    and state_dict keys are the native container's.

    It falls back to running its children one by one (the per-layer path)
    whenever the fused path would behave differently: a child without a fused step,
    a hook on a child (``torchbp.PerSampleGradients`` registers one on each Linear)
    or a global module hook, autocast, or an input that is not a tensor. Made by
    :func:`torchbp.fuse`.
    """

    def forward(self, input: Any) -> Any:
        chain = self._fused_chain(input)
        if chain is None:
            return super().forward(input)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        kinds, args = chain
        return SequentialFunction.apply(input, tuple(kinds), *args)[-1]

    def _fused_chain(self, input: Any) -> tuple[list[str], list[Any]] | None:
        """The kinds and args of SequentialFunction for ``input`` (two lists), or None where the chain
        cannot be fused. Walked on every call: hooks, layers and parameters may change between calls."""
        if not isinstance(input, torch.Tensor) or _global_hooks():
            return None
        if autocast.any_enabled() and autocast.autocast_active(input):  # the per-layer path makes autocast's casts
            return None
        kinds: list[str] = []
        args: list[Any] = []
        for layer in self._modules.values():
            step = _FUSABLE.get(type(layer))
            if step is None or _runs_other_code(layer):  # the fused chain would not run it
                return None
            if step.arity:  # an activation has no arguments to ask for
                arguments = step.arguments(layer)
                if arguments is None:
                    return None
                args += arguments
            kinds.append(step.kind)
        return (kinds, args) if kinds else None


class FusedLoss(HandDerivedModule, torch.nn.Module):
    r"""``scale * loss_fn(model(input), target)``, as one Function where the chain and the loss allow.

    When ``model`` is a :class:`torchbp.nn.Sequential` of layers with fused steps
    and ``loss_fn`` a torchbp MSELoss (any reduction), the network, the loss and
    the constant ``scale`` run as one :class:`SequentialFunction` node whose last
    steps are the squared error and the scale: for the smallest networks, where
    every autograd node costs more than its arithmetic, torchbp's fastest path.
    Elsewhere, and under the fused chain's own fallbacks (hooks, autocast, a
    non-tensor input), it computes ``scale * loss_fn(model(input), target)``
    (without the product when ``scale`` is 1). Made by :func:`torchbp.fuse_loss`.

    Args:
        model: the network; its parameters are this module's (state_dict keys ``model.*``).
        loss_fn: the loss, called as ``loss_fn(output, target)``.
        scale: a constant factor of the loss, such as the ½ of J = ½ Σ (y − ŷ)². Default: 1.

    Shape:
        - Input: as ``model``'s. Target: the output's shape (no broadcasting).
        - Output: as ``loss_fn``'s.

    Examples::

        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
        >>> half_sse = torchbp.fuse_loss(net, torch.nn.MSELoss(reduction="sum"), scale=0.5)
        >>> half_sse(torch.randn(5, 2), torch.randn(5, 1)).backward()
    """

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, scale: float = 1.0):
        super().__init__()
        validate_scale(scale)
        self.model = model
        self.loss_fn = loss_fn
        self.scale = scale

    def forward(self, input: Any, target: Any) -> Any:
        chain = self._fused_chain(input, target)
        if chain is None:
            loss = self.loss_fn(self.model(input), target)
            return loss if self.scale == 1 else self.scale * loss
        kinds, args = chain
        return SequentialFunction.apply(input, tuple(kinds), *args)[-1]

    def _fused_chain(self, input: Any, target: Any) -> tuple[list[str], list[Any]] | None:
        # past Module.__getattr__; both were set in __init__, loss_fn as a Module
        model = self._modules["model"]
        loss_fn: torch.nn.Module = self._modules["loss_fn"]  # type: ignore[assignment]  # not typing.cast: a call
        step = _FUSABLE_LOSSES.get(type(loss_fn))
        if (
            step is None
            or type(model) is not Sequential
            or not isinstance(target, torch.Tensor)
            or _runs_other_code(model)
            or _runs_other_code(loss_fn)
        ):
            return None
        chain = model._fused_chain(input)
        arguments = step.arguments(loss_fn)
        if chain is None or arguments is None:
            return None
        kinds, args = chain
        kinds.append(step.kind)
        args += (target, *arguments)
        if self.scale != 1:
            kinds.append(SCALE.kind)
            args.append(self.scale)
        return kinds, args

    def extra_repr(self) -> str:
        return "" if self.scale == 1 else f"scale={self.scale}"


def _runs_other_code(module: torch.nn.Module) -> bool:
    """Would calling ``module`` run more than its class's forward: a hook, or a forward set on the instance
    (as libraries that wrap layers do)?"""
    attributes = module.__dict__  # read directly: each of module._forward_hooks … would first search the class
    return bool(
        attributes["_forward_hooks"]
        or attributes["_forward_pre_hooks"]
        or attributes["_backward_hooks"]
        or attributes["_backward_pre_hooks"]
        or "forward" in attributes
    )


def _global_hooks() -> bool:
    return bool(
        module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )
