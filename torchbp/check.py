"""Check any function or model against native autograd: run both sides, then compare them.

:func:`check_function` and :func:`check_model` run the torchbp side and the
reference side from identical inputs and parameters, drawing the same random
numbers (:class:`SameRandomness`), so a model with dropout compares like one
without; :class:`ModelPair` compares a torchbp model with its native twin, for
:func:`check_model` and for the lockstep trainer alike. The comparison itself,
its criterion and its report, is :mod:`torchbp.compare`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchbp.compare import Report, settle
from torchbp.convert import convert, to_native
from torchbp.layers import HAND_DERIVED, runs_hand_derived


class SameRandomness:
    """Lets a second run draw the random numbers a first run drew.

    Create it before the first run and call :meth:`replay` before the second:
    the global CPU generator (and CUDA's, where it is in use) starts again from
    where the first run started, so dropout masks and the like agree.
    """

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]  # torch leaves it untyped
        self.cuda = torch.cuda.get_rng_state_all() if initialized else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def check_function(
    fn: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    reference: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    *inputs: Any,
    grad_output: torch.Tensor | Sequence[torch.Tensor] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """Run ``fn`` and ``reference`` on copies of ``inputs``, backpropagate the same upstream
    gradient through both, and compare the outputs and the gradient of every input
    that requires grad.

    When no input requires grad, every floating-point tensor input is
    differentiated, so a check of gradients cannot quietly become a check of
    outputs alone. ``grad_output`` is the upstream gradient, one per output;
    when not given, it is drawn from a normal distribution with a fixed seed.
    Copies keep each input's strides, so a non-contiguous input stays
    non-contiguous, and both sides draw the same random numbers. Works for any
    pair of callables: pass your own autograd Function's ``apply`` as ``fn``.
    """
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
    if not wrt:
        wrt = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    actual_inputs = [_copy_leaf(x, requires_grad=i in wrt) for i, x in enumerate(inputs)]
    reference_inputs = [_copy_leaf(x, requires_grad=i in wrt) for i, x in enumerate(inputs)]
    randomness = SameRandomness()
    actual_outputs = as_tuple(fn(*actual_inputs))
    randomness.replay()
    reference_outputs = as_tuple(reference(*reference_inputs))

    count = max(len(actual_outputs), len(reference_outputs))
    pairs = [
        ("output" if count == 1 else f"output[{i}]", _get(actual_outputs, i), _get(reference_outputs, i))
        for i in range(count)
    ]
    grad_outputs = _grad_outputs(grad_output, reference_outputs)
    actual_grads = _gradients(actual_outputs, grad_outputs, [actual_inputs[i] for i in wrt])
    reference_grads = _gradients(reference_outputs, grad_outputs, [reference_inputs[i] for i in wrt])
    pairs += [(f"inputs[{i}].grad", mine, theirs) for i, mine, theirs in zip(wrt, actual_grads, reference_grads)]
    return Report(f"check_function({_callable_name(fn)})", settle(pairs, rtol, atol))


def check_model(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target: torch.Tensor,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """Compare the torchbp and the native version of ``model`` from identical parameters.

    ``model`` may be given in either form; neither it nor ``loss_fn`` is changed.
    A ``loss_fn`` that is a module is converted too (a plain function is used
    as it is on both sides). Both copies run forward, loss and backward on the
    same ``inputs`` and ``target``, drawing the same random numbers; the report
    compares the output, the loss, the gradient with respect to the input and
    every parameter's gradient by name. A model and loss with no layer that
    torchbp replaces raise ValueError: both sides would run native code.
    """
    require_hand_derived_layers("check_model", model, loss_fn)
    randomness = SameRandomness()
    hand = _run_model(convert, model, loss_fn, inputs, target)
    randomness.replay()
    native = _run_model(to_native, model, loss_fn, inputs, target)
    report = ModelPair(hand.model, native.model).compare(
        f"check_model({type(model).__name__})",
        (hand.loss, native.loss),
        outputs=(hand.output, native.output),
        inputs=(hand.input, native.input),
        rtol=rtol,
        atol=atol,
    )
    report.layers = describe_layers(model, loss_fn)
    return report


class ModelPair:
    """A torchbp model and its native twin of the same structure, matched parameter by parameter.

    The matching is made once, so comparing the two again and again (as
    :class:`torchbp.LockstepTrainer` does at every step) costs only the comparison.
    """

    def __init__(self, hand: torch.nn.Module, native: torch.nn.Module):
        self.hand, self.native = hand, native
        named = list(hand.named_parameters())
        self.names = [name for name, _ in named]
        self.grad_names = [f"{name}.grad" for name in self.names]
        self.hand_parameters = [parameter for _, parameter in named]
        self.native_parameters = list(native.parameters())
        buffers = list(hand.named_buffers())  # running statistics: the forward changes them, both must agree
        self.buffer_names = [name for name, _ in buffers]
        self.hand_buffers = [buffer for _, buffer in buffers]
        self.native_buffers = list(native.buffers())

    def compare(
        self,
        title: str,
        losses: tuple[torch.Tensor, torch.Tensor],
        *,
        outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
        inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
        parameters: bool = False,
        rtol: float | None = None,
        atol: float | None = None,
        defer_equal: bool = False,
    ) -> Report:
        """Compare the two after both ran forward, loss and backward.

        Rows, in order: the output (when ``outputs`` is given), the loss, the input's
        gradient (when ``inputs`` is given and requires grad), then for each parameter
        by name its value (with ``parameters``) and its ``.grad``, then each buffer (a
        batch normalisation's running statistics and count, which the forward updates). :func:`check_model`
        and :class:`torchbp.LockstepTrainer` both report through this; the trainer
        passes ``defer_equal`` (see :func:`settle`), as most of its reports are never read.
        """
        pairs: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = (
            [("output", *outputs)] if outputs is not None else []
        )
        pairs.append(("loss", *losses))
        if inputs is not None and inputs[1].requires_grad:
            pairs.append(("input.grad", inputs[0].grad, inputs[1].grad))
        for name, grad_name, mine, theirs in zip(
            self.names, self.grad_names, self.hand_parameters, self.native_parameters
        ):
            if parameters:
                pairs.append((name, mine, theirs))
            if mine.requires_grad or theirs.requires_grad:
                pairs.append((grad_name, mine.grad, theirs.grad))
        pairs.extend(zip(self.buffer_names, self.hand_buffers, self.native_buffers))
        return Report(title, settle(pairs, rtol, atol, defer_equal))


def describe_layers(model: torch.nn.Module, loss_fn: Callable[..., Any] | None = None) -> str:
    """One line naming the layers of ``model`` (and of a loss module) torchbp replaces and those it leaves native.

    For example ``hand-derived: 0 Linear, 1 Sigmoid, loss MSELoss; native: 2 ReLU``.
    """

    def layers(module: torch.nn.Module, name: str) -> list[tuple[str, torch.nn.Module]]:
        """The leaves below ``module``, and the torchbp layers, whose children are parts of them (a
        MultiheadAttention's out_proj): the containers only arrange them."""
        children = list(module.named_children())
        if runs_hand_derived(module) or not children:
            return [(name, module)]
        return [found for child, m in children for found in layers(m, f"{name}.{child}" if name else child)]

    found = layers(model, "") + (layers(loss_fn, "loss") if isinstance(loss_fn, torch.nn.Module) else [])
    hand = [f"{name} {type(m).__name__}" for name, m in found if runs_hand_derived(m)]
    native = [f"{name} {type(m).__name__}" for name, m in found if not runs_hand_derived(m)]
    return f"hand-derived: {', '.join(hand) or 'none'}; native: {', '.join(native) or 'none'}"


def _callable_name(fn: Callable[..., Any]) -> str:
    """``Cube.apply`` for a Function's apply (whose __qualname__ is ``Function.apply``), a torch.library custom
    op's own name (``demo::swish``), else the qualified name."""
    qualname = getattr(fn, "_qualname", None)  # a torch.library custom op (CustomOpDef)
    if isinstance(qualname, str):
        return qualname
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__name__}.{fn.__name__}"
    return getattr(fn, "__qualname__", type(fn).__name__)


def require_hand_derived_layers(caller: str, model: torch.nn.Module, loss_fn: Callable[..., Any] | None) -> None:
    """Refuse a model (and loss) in which torchbp would replace nothing."""
    modules = [*model.modules(), *(loss_fn.modules() if isinstance(loss_fn, torch.nn.Module) else [])]
    if not any(runs_hand_derived(m) for m in modules):
        raise ValueError(
            f"{caller}: {type(model).__name__} holds no layer that torchbp replaces "
            f"({', '.join(cls.__name__ for cls in HAND_DERIVED)}), so both sides would run native code"
        )


class _SideRun(NamedTuple):
    model: torch.nn.Module
    input: torch.Tensor
    output: torch.Tensor
    loss: torch.Tensor


def _run_model(
    to_side: Callable[[torch.nn.Module], torch.nn.Module],
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target: torch.Tensor,
) -> _SideRun:
    """Forward, loss and backward on one side's copy, the gradients left in ``.grad``."""
    side_model = to_side(model)
    side_model.zero_grad(set_to_none=True)  # the copy's own gradients only
    side_loss = to_side(loss_fn) if isinstance(loss_fn, torch.nn.Module) else loss_fn
    x = _copy_leaf(inputs, requires_grad=inputs.is_floating_point())
    output = side_model(x)
    loss = side_loss(output, target)
    if loss.requires_grad:
        loss.backward(torch.ones_like(loss))
    return _SideRun(side_model, x, output, loss)


def _copy_leaf(x: Any, requires_grad: bool | None = None) -> Any:
    """A new leaf with x's values and strides, so each side gets its own graph and grads."""
    if not isinstance(x, torch.Tensor):
        return copy.deepcopy(x)
    requires_grad = x.requires_grad if requires_grad is None else requires_grad
    try:
        leaf = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        leaf.copy_(x.detach())
    except RuntimeError:  # overlapping strides (an expanded tensor) cannot be written to
        leaf = x.detach().clone()
    return leaf.requires_grad_(requires_grad)


def as_tuple(output: Any) -> tuple[Any, ...]:
    """A function's output as a tuple of outputs (one output is a tuple of one)."""
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def _get(items: Sequence[Any], i: int) -> Any:
    return items[i] if i < len(items) else None


def _grad_outputs(
    given: torch.Tensor | Sequence[torch.Tensor] | None, reference_outputs: tuple[Any, ...]
) -> tuple[torch.Tensor | None, ...]:
    if given is not None:
        return as_tuple(given)
    generator = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.dtype).to(out.device)
        if isinstance(out, torch.Tensor) and out.is_floating_point()
        else None
        for out in reference_outputs
    )


def _gradients(
    outputs: tuple[Any, ...], grad_outputs: tuple[torch.Tensor | None, ...], wrt: list[torch.Tensor]
) -> list[torch.Tensor | None]:
    """∂(Σ outputs · grad_outputs)/∂wrt; None for each when nothing is differentiable."""
    pairs = [
        (out, g)
        for out, g in zip(outputs, grad_outputs)
        if isinstance(out, torch.Tensor) and out.requires_grad and g is not None
    ]
    if not pairs or not wrt:
        return [None] * len(wrt)
    outs, gs = zip(*pairs)
    return list(torch.autograd.grad(outs, wrt, gs, allow_unused=True, materialize_grads=True))
