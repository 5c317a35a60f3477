"""Per-sample gradients from the hand-derived backward, in the same single backward pass.

∂J/∂W = Σ_n δ_n a_prev,nᵀ. The hand-derived backward of a linear layer holds
δ (what arrives at its output z) and a_prev (its saved input) for every sample
n; keeping the terms apart instead of summing them gives each sample's own
gradient, with no loop over samples and no second pass.

:class:`PerSampleGradients` records those two tensors for every supported layer
of a torchbp model while a forward and backward run inside it. It works with
hooks that exist only inside the ``with`` block, so training outside it runs
exactly the code it runs without this module.

Scaling follows the loss's reduction. With ``reduction="sum"`` the per-sample
gradients sum to ``.grad``. With ``reduction="mean"`` each is the gradient of
that sample's own loss, reduced over its own elements as the batch loss is
(what ``torch.func.vmap(torch.func.grad(...))`` gives for one sample), so
their mean over the N samples is ``.grad``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from torchbp.convert import convert
from torchbp.layers import HAND_DERIVED, LAYERS
from torchbp.validation import ShapeError

# The layers with a per-sample rule, from the table of layers (each rule lives in its layer's file).
PER_SAMPLE_RULES = {layer.hand: layer.per_sample for layer in LAYERS if layer.per_sample is not None}


def reduction_scale(
    loss_fn: Callable[..., torch.Tensor], batch_size: int, target: torch.Tensor | None = None
) -> float | torch.Tensor:
    """The factor that turns each sample's share of the batch loss's gradient into its own gradient.

    "sum": 1. "mean": the batch loss divides by all the counted elements, a sample's own loss by its own,
    so the factor is their ratio: N where every sample counts alike, and for class-index targets with an
    ``ignore_index`` (a loss module with that attribute) the total count of targets not ignored over the
    sample's own, per sample, shape (N,) (a sample with none of its own gets a zero gradient, as native
    cross-entropy's backward and torch.func give it).
    """
    reduction = getattr(loss_fn, "reduction", None)
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        ignore_index = getattr(loss_fn, "ignore_index", None)
        if ignore_index is None or not isinstance(target, torch.Tensor) or target.is_floating_point():
            return float(batch_size)
        counted = (target != ignore_index).reshape(batch_size, -1).sum(1).to(torch.float64)  # each sample's
        return torch.where(counted > 0, counted.sum() / counted.clamp(min=1), 0.0)
    raise ValueError(
        "per-sample gradients need a loss with reduction 'sum' or 'mean' (a loss module such as "
        f"torchbp.nn.MSELoss, or any callable with a .reduction attribute), got reduction={reduction!r}"
    )


def refuse_what_no_rule_covers(model: torch.nn.Module, layers: dict[torch.nn.Module, str]) -> None:
    """NotImplementedError, before any forward, for a trainable parameter no layer's rule covers, and for a
    layer whose rule refuses it as it stands (a batch norm in training mode, which would change its buffers)."""
    covered = {id(p) for module in layers for p in module.parameters()}  # a layer's own and its parts'
    owners = {
        id(p): f"{name or 'the model'} ({type(module).__name__})"
        for name, module in model.named_modules()
        for p in module.parameters(recurse=False)
    }
    uncovered = [owners[id(p)] for p in model.parameters() if p.requires_grad and id(p) not in covered]
    if uncovered:
        raise NotImplementedError(
            f"per-sample gradients: no per-sample rule for {', '.join(dict.fromkeys(uncovered))}; "
            f"torchbp has rules for {', '.join(cls.__name__ for cls in PER_SAMPLE_RULES)} only "
            "(freeze those parameters with requires_grad_(False) to take the others' per-sample gradients)"
        )
    for module, name in layers.items():  # before any forward, which would change the model's buffers
        refusal = getattr(PER_SAMPLE_RULES[type(module)], "refusal", None)
        reason = refusal(module) if refusal is not None else None
        if reason is not None:
            raise NotImplementedError(f"per-sample gradients: {name or 'the model'}: {reason}")


class PerSampleGradients:
    """Records δ and a_prev of every supported layer during one forward and backward.

    Use it around the forward and backward of a torchbp model::

        with PerSampleGradients(model, scale=1.0) as per_sample:
            loss_fn(model(inputs), target).backward()
        per_sample.grads()        # {name: (N, *param.shape)}
        per_sample.grad_norms()   # (N,)

    Every parameter that requires grad must belong to a layer with a per-sample
    rule (those of the table, torchbp.nn.LAYERS, that have one); others raise NotImplementedError.
    ``scale``, a number or one per sample, multiplies
    every per-sample gradient (see :func:`reduction_scale`).
    """

    def __init__(self, model: torch.nn.Module, scale: float | torch.Tensor = 1.0):
        self.model, self.scale = model, scale
        self.layers = {module: name for name, module in model.named_modules() if type(module) in PER_SAMPLE_RULES}
        refuse_what_no_rule_covers(model, self.layers)
        self.records: dict[torch.nn.Module, list[list[Any]]] = {}  # layer: one [a_prev, δ] per call
        self.outputs: list[torch.Tensor] = []  # each call's z, for a backward that stops at them
        self.unrecorded: set[torch.nn.Module] = set()  # layers called whose output did not require grad
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> PerSampleGradients:
        self.records.clear()
        self.unrecorded.clear()
        self.handles = [module.register_forward_hook(self._record, with_kwargs=True) for module in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.outputs = [], []

    def _record(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        a_prev, outputs = _what_a_call_records(module, args, kwargs, output)
        if not outputs:
            self.unrecorded.add(module)
            return
        shapes = [_moved(z.shape, axis) for z, axis in outputs]
        record = [a_prev, [None] * len(outputs), shapes]  # each δ arrives during backward
        self.records.setdefault(module, []).append(record)
        for i, (z, axis) in enumerate(outputs):
            self.outputs.append(z)
            z.register_hook(functools.partial(_keep, record[1], i, axis))  # type: ignore[no-untyped-call]

    def recorded(self, module: torch.nn.Module) -> list[tuple[Any, Any]]:
        """The layer's calls as recorded: (a_prev, δ) each, δ unscaled (None where none arrived; a tuple, one
        per output, where its rule records several)."""
        return [
            (a_prev, deltas[0] if len(deltas) == 1 else tuple(deltas)) for a_prev, deltas, _ in self.records[module]
        ]

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` only as far as the recorded layers' outputs: every δ, no ``.grad``."""
        if self.outputs and loss.requires_grad:
            torch.autograd.grad(loss, self.outputs, allow_unused=True)

    def _calls(self) -> dict[torch.nn.Module, list[tuple[Any, Any]]]:
        """Each recorded layer's calls as (a_prev, scale · δ); δ = 0 where none arrived.

        The scale goes onto δ, (N, out), rather than onto the (N, out, in) results.
        """
        calls: dict[torch.nn.Module, list[tuple[Any, Any]]] = {}
        batch_sizes: set[int] = set()
        for module, records in self.records.items():
            for a_prev, deltas, shapes in records:
                first = _first(a_prev)
                if first.dim() < 2:
                    raise ShapeError(
                        f"per-sample gradients: {self.layers[module] or 'the model'} saw an input of shape "
                        f"{tuple(first.shape)}; expected (N, ...) with the sample dimension first (a layer "
                        "whose output all samples share, broadcast later, has no δ of each sample's own: give "
                        "it an input for each sample, expanded to (N, ...))"
                    )
                batch_sizes.add(first.shape[0])
                scaled = [
                    _scaled(first.new_zeros(shape) if d is None else d, self.scale) for d, shape in zip(deltas, shapes)
                ]
                calls.setdefault(module, []).append((a_prev, scaled[0] if len(scaled) == 1 else tuple(scaled)))
        if len(batch_sizes) > 1:
            raise ShapeError(f"per-sample gradients: layers saw different sample counts {sorted(batch_sizes)}")
        return calls

    def _layer_grads(
        self, module: torch.nn.Module, calls: list[tuple[Any, Any]], out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        rule = PER_SAMPLE_RULES[type(module)]
        grads = rule.grads(module, *calls[0], out)
        for a_prev, delta in calls[1:]:  # a layer used several times: its contributions add up
            for local, grad in rule.grads(module, a_prev, delta, {}).items():
                grads[local].add_(grad)
        return grads

    def grads(self, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Each parameter's per-sample gradients, (N, *param.shape), by parameter name.

        ``out``: tensors to write into, by the same names (an earlier result, say);
        see :func:`per_sample_grads`.
        """
        calls = self._calls()
        if out:
            batch = _first(next(iter(calls.values()))[0][0]).shape[0] if calls else 0
            validate_out(self.model, out, batch)
        result = {}
        for module, layer_calls in calls.items():
            prefix = self.layers[module]
            full = {local: f"{prefix}.{local}" if prefix else local for local, _ in module.named_parameters()}
            layer_out = {local: out[name] for local, name in full.items() if out and name in out}
            for local, grad in self._layer_grads(module, layer_calls, layer_out).items():
                result[full[local]] = grad
        order = {name: i for i, (name, _) in enumerate(self.model.named_parameters())}
        return dict(sorted(result.items(), key=lambda item: order[item[0]]))

    def grad_norms(self) -> torch.Tensor:
        """Each sample's total gradient norm over all parameters, (N,).

        A layer called once gives its norms without forming its gradients
        (see the rule's ``norms_squared``); a layer called several times needs
        its summed gradient first.
        """
        squared = None
        for module, calls in self._calls().items():
            if len(calls) == 1:
                layer = PER_SAMPLE_RULES[type(module)].norms_squared(module, *calls[0])
            else:
                first = _first(calls[0][0])
                layer = first.new_zeros(first.shape[0])  # stays 0 where every parameter of the layer is frozen
                for grad in self._layer_grads(module, calls, {}).values():
                    layer = layer + grad.flatten(1).square().sum(1)
            squared = layer if squared is None else squared + layer
        if squared is None:
            return torch.zeros(0)
        return squared.sqrt()


def _what_a_call_records(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> tuple[Any, list[tuple[torch.Tensor, int]]]:
    """A call's a_prev and the outputs whose δ its rule reads (each with its sample axis), those that require
    grad: its first input and its output, unless its rule says otherwise (see PerSampleRule)."""
    rule = PER_SAMPLE_RULES[type(module)]
    if hasattr(rule, "recorded"):
        a_prev, outputs = rule.recorded(module, args, kwargs, output)
    else:
        a_prev, outputs = args[0].detach(), [(output, 0)]
    return a_prev, [(z, axis) for z, axis in outputs if z.requires_grad]


def _scaled(delta: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """scale · δ, the scale a number or one per sample."""
    if isinstance(scale, torch.Tensor):
        return delta * scale.to(delta.dtype).view(-1, *[1] * (delta.dim() - 1))
    return delta * scale if scale != 1 else delta


def _first(a_prev: torch.Tensor | tuple[Any, ...]) -> torch.Tensor:
    """A call's a_prev, or the first item of what a rule kept of it: samples first."""
    return a_prev[0] if isinstance(a_prev, tuple) else a_prev


def _moved(shape: torch.Size, axis: int) -> tuple[int, ...]:
    """The shape with the sample axis first."""
    sizes = list(shape)
    return (sizes.pop(axis), *sizes)


def _keep(deltas: list[torch.Tensor | None], i: int, axis: int, delta: torch.Tensor) -> None:
    """A tensor hook: keep the δ that arrived at a recorded output, samples first."""
    deltas[i] = delta.detach().movedim(axis, 0)


def validate_out(model: torch.nn.Module, out: dict[str, torch.Tensor], batch: int) -> None:
    """``out`` names parameters of ``model`` that require grad, each with a contiguous tensor of its own of
    shape (batch, *parameter.shape), the parameter's dtype and device."""
    parameters = dict(model.named_parameters())
    storages: dict[int, str] = {}
    for name, tensor in out.items():
        if name not in parameters:
            raise KeyError(f"per-sample gradients: out names {name!r}, which is not a parameter of the model")
        p = parameters[name]
        if not p.requires_grad:
            raise ValueError(f"per-sample gradients: out names {name!r}, a parameter that does not require grad")
        if tensor.shape != (batch, *p.shape) or tensor.dtype != p.dtype or tensor.device != p.device:
            raise ShapeError(
                f"per-sample gradients: out[{name!r}] is {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}, "
                f"expected {(batch, *p.shape)} {p.dtype} on {p.device}"
            )
        # Every sample's gradient needs memory of its own: an expanded or overlapping
        # buffer, or one shared by two names, would be written over without an error.
        if not tensor.is_contiguous():
            raise ValueError(f"per-sample gradients: out[{name!r}] must be contiguous (a fresh or earlier result)")
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in storages:
            raise ValueError(f"per-sample gradients: out[{name!r}] shares its memory with out[{storages[storage]!r}]")
        storages[storage] = name


def _torchbp_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself when it holds no native layer that torchbp replaces, else a converted copy."""
    if any(type(m) in HAND_DERIVED for m in model.modules()):
        return convert(model)
    return model


def _recorded_pass(
    model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor, target: torch.Tensor
) -> PerSampleGradients:
    """One forward and a backward that stops at the recorded layers, of a torchbp version of ``model``."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ShapeError(
            f"per-sample gradients: expected inputs of shape (N, ...), the sample dimension first, got {shape}"
        )
    model = _torchbp_model(model)
    loss_fn = convert(loss_fn) if isinstance(loss_fn, torch.nn.Module) else loss_fn
    recorder = PerSampleGradients(model, scale=reduction_scale(loss_fn, inputs.shape[0], target))
    trainable = [p for p in model.parameters() if p.requires_grad]
    inputs = inputs.detach().requires_grad_() if inputs.is_floating_point() else inputs
    with recorder, _parameters_frozen(trainable, recorder.layers):
        recorder.backward(loss_fn(model(inputs), target))
    if not any(p.requires_grad for module in recorder.unrecorded for p in module.parameters()):
        return recorder  # (the flags are back: requires_grad is each parameter's own again)
    with recorder:  # a trainable layer was called where gradients are off, say: the plain pass
        recorder.backward(loss_fn(model(inputs.detach()), target))
    return recorder


@contextlib.contextmanager
def _parameters_frozen(parameters: list[torch.nn.Parameter], layers: Iterable[torch.nn.Module]) -> Iterator[None]:
    """The parameters do not require grad inside the block, except in a call of one of the ``layers`` whose
    inputs do not require grad either (the first layer where the inputs are indices, a position embedding).

    Every layer's δ still arrives, as each layer's output depends on the inputs (which require grad
    where they are floating point, see _recorded_pass) or on such a layer's parameters, but no other
    layer's backward forms the batch's summed weight gradient, which no per-sample rule reads (a
    convolution's is the costliest part of its backward); the backward stops at the recorded
    outputs, so the first layer's input gradient is not formed either. (Not torch.func.functional_call
    with detached parameters: it leaves them swapped in a model that holds one layer twice.)
    """
    frozen = {id(p) for p in parameters}

    def own(module: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in module.parameters() if id(p) in frozen]

    def entering(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())):
            for p in own(module):
                p.requires_grad_(True)

    def leaving(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        for p in own(module):
            p.requires_grad_(False)

    for p in parameters:
        p.requires_grad_(False)
    handles = []
    try:
        for layer in layers:
            handles += [
                layer.register_forward_pre_hook(entering, with_kwargs=True),
                layer.register_forward_hook(leaving),
            ]
        yield
    finally:
        for handle in handles:
            handle.remove()
        for p in parameters:
            p.requires_grad_(True)


def per_sample_grads(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    target: torch.Tensor,
    *,
    out: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every parameter's per-sample gradients: {name: (N, *param.shape)}, N = ``inputs.shape[0]``.

    One forward and one backward through the hand-derived Functions, no loop
    over samples. For inputs (N, T, ..., in) each sample's gradient sums over T.
    With a "sum" loss they sum to the parameters' gradient; with "mean", each is
    the gradient of that sample's own loss and their mean is the parameters'
    gradient. ``model`` may be native (a converted copy is used); its ``.grad``
    is left alone. While the pass runs, the parameters that require grad are set
    not to (the inputs require it instead), so that no layer forms the batch's
    summed gradient, which per-sample rules do not read; each gets its flag back
    when the call returns or raises.

    ``out`` takes tensors to write the results into, by parameter name, each of
    shape (N, *param.shape): pass the previous call's result in a loop. Large
    per-sample gradients are dominated by the cost of fresh memory (the
    operating system zeroes every new page), which reuse avoids; the returned
    tensors are then those buffers, overwritten by the next call.
    """
    return _recorded_pass(model, loss_fn, inputs, target).grads(out)


def per_sample_grad_norms(
    model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Each sample's total gradient norm over all parameters, (N,), scaled as :func:`per_sample_grads`.

    For a linear layer on (N, in) inputs, ‖δ_n a_nᵀ‖ = ‖δ_n‖ ‖a_n‖: the (N, out, in)
    gradients are never formed.
    """
    return _recorded_pass(model, loss_fn, inputs, target).grad_norms()
