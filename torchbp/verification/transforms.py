"""Properties under PyTorch's function transforms: torch.func.

Each is held to ``fn``'s own eager result (a loop over samples, a Jacobian built
from its backward), not to the reference: a transform must not change what fn
computes, and whether fn computes the right thing is the float64 property's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.func

from torchbp.check import as_tuple
from torchbp.verification.outcome import Failed, NotApplicable, verifies
from torchbp.verification.subject import Subject, functions_of

SAMPLES = 4  # samples looped over, for the vmap properties
JACOBIAN_SAMPLES = 2  # the Jacobian grows with the square of the samples


def require_batch(subject: Subject) -> None:
    """NotApplicable where no input has a batch dimension: the rows that vary the batch need one."""
    if not subject.batched:
        raise NotApplicable(f"no input has a batch dimension ({subject.batch_origin()})")


def old_style(function: type[torch.autograd.Function]) -> bool:
    """ctx in forward: no setup_context of its own."""
    return function.setup_context is torch.autograd.Function.setup_context


def vmap_rule(function: type[torch.autograd.Function]) -> bool:
    return bool(getattr(function, "generate_vmap_rule", False)) or function.vmap is not torch.autograd.Function.vmap


def _transformable(subject: Subject, vmaps_forward: bool) -> None:
    """One diagnosis, before the transform fails in its own words, for a Function torch.func cannot run: an
    old-style one (every torch.func row fails for it), or one without a vmap rule (the rows that vmap its
    forward)."""
    if isinstance(subject.fn, torch._library.custom_ops.CustomOpDef):
        if vmaps_forward and getattr(subject.fn, "_vmap_fn", None) is None:
            raise Failed(
                f"{subject.name} is a custom op without a vmap rule",
                fix="register one with torch.library.register_vmap (or the op's register_vmap): vmap and "
                "vmap-grad fail for this one cause",
            )
        return
    for function in functions_of(subject.baseline.outputs):
        if old_style(function):
            raise Failed(
                f"{function.__name__} is an old-style autograd.Function (ctx in forward), which torch.func "
                "does not transform",
                fix="write forward(*inputs) without ctx, move the ctx work to setup_context(ctx, inputs, output) "
                "and set generate_vmap_rule = True: vmap, vmap-grad, jacrev and jvp all fail for this one cause",
            )
        if vmaps_forward and not vmap_rule(function):
            raise Failed(
                f"{function.__name__} has no vmap rule",
                fix="set generate_vmap_rule = True on the class (or write a vmap staticmethod): vmap and "
                "vmap-grad fail for this one cause",
            )


GRAD_TRANSFORM_REFUSED = "must override the setup_context staticmethod"  # PyTorch's words for a custom op's autograd


def _custom_op_refused(subject: Subject, error: RuntimeError) -> NotApplicable | RuntimeError:
    """A custom op whose registered autograd torch.func's grad transforms do not run (PyTorch's limit, not the
    op's mistake): not applicable; any other error as it is."""
    if isinstance(subject.fn, torch._library.custom_ops.CustomOpDef) and GRAD_TRANSFORM_REFUSED in str(error):
        return NotApplicable(
            "torch.func's grad transforms do not run a torch.library custom op's registered autograd in this "
            f"PyTorch ({torch.__version__.split('+')[0]}): it asks for an autograd.Function's setup_context"
        )
    return error


def _samples(subject: Subject, count: int) -> int:
    return min(count, subject.batch_size)


def _sample(subject: Subject, inputs: list[Any], n: int) -> list[Any]:
    """Sample n of each batched input, its batch dimension removed (what fn sees under vmap)."""
    return [x.select(subject.batch_dims[i], n) if i in subject.batched else x for i, x in enumerate(inputs)]


def _in_dims(subject: Subject) -> tuple[int | None, ...]:
    return tuple(subject.batch_dims)


@verifies(
    "vmap",
    "an old-style Function (ctx in forward), no generate_vmap_rule = True or vmap staticmethod, "
    "or Python control flow on tensor values",
)
def check_vmap(subject: Subject) -> str:
    """Torch.func.vmap over the batch dimension gives what a loop over the samples gives."""
    require_batch(subject)
    _transformable(subject, vmaps_forward=True)
    n = _samples(subject, SAMPLES)
    inputs = subject.inputs(requires=(), samples=n)
    batched = as_tuple(torch.func.vmap(subject.fn, in_dims=_in_dims(subject))(*inputs))
    looped = [as_tuple(subject.fn(*_sample(subject, inputs, k))) for k in range(n)]
    pairs = [
        ("output" if len(batched) == 1 else f"output[{j}]", out, torch.stack([sample[j] for sample in looped]))
        for j, out in enumerate(batched)
        if isinstance(out, torch.Tensor)
    ]
    return f"{n} samples: {subject.compare(pairs)}"


@verifies(
    "vmap-grad",
    "a backward that assumes a batch dimension (one sample has none: use ... and -1 for dimensions), leaves "
    "autograd (.numpy(), .item()) or writes into its input in place; and the causes under vmap",
)
def vmap_grad(subject: Subject) -> str:
    """Per-sample gradients by torch.func.vmap(grad) equal one backward per sample."""
    require_batch(subject)
    _transformable(subject, vmaps_forward=True)
    n = _samples(subject, SAMPLES)
    inputs = subject.inputs(requires=(), samples=n)
    samples = [
        [
            x.detach().requires_grad_(i in subject.differentiable) if isinstance(x, torch.Tensor) else x
            for i, x in enumerate(_sample(subject, inputs, k))
        ]
        for k in range(n)
    ]
    outputs = [as_tuple(subject.fn(*sample)) for sample in samples]
    # One upstream gradient for the whole batch, so that every sample gets its own.
    upstream = subject.upstream(
        tuple(
            torch.stack(per_output) if isinstance(per_output[0], torch.Tensor) else None for per_output in zip(*outputs)
        )
    )
    looped = [subject.gradients(outputs[k], samples[k], upstream=_sample_of(upstream, k)) for k in range(n)]

    def loss(*args: Any) -> Any:
        *inputs, upstream = args
        return sum((out * u).sum() for out, u in zip(as_tuple(subject.fn(*inputs)), upstream) if u is not None)

    argnums = tuple(subject.differentiable)
    upstream_dims = tuple(None if u is None else 0 for u in upstream)
    try:
        grads = torch.func.vmap(torch.func.grad(loss, argnums=argnums), in_dims=(*_in_dims(subject), upstream_dims))(
            *inputs, upstream
        )
    except RuntimeError as error:
        raise _custom_op_refused(subject, error) from None
    pairs = [
        (f"inputs[{i}].grad", g, torch.stack([sample[j] for sample in looped]))
        for j, (i, g) in enumerate(zip(argnums, grads))
    ]
    return f"{n} samples: {subject.compare(pairs)}"


def _sample_of(upstream: tuple[torch.Tensor | None, ...], k: int) -> tuple[torch.Tensor | None, ...]:
    """Sample k's upstream gradients, copies: a backward that writes into its gradient must not reach the rest."""
    return tuple(None if u is None else u[k].clone() for u in upstream)


def _of_differentiable(subject: Subject, inputs: list[Any]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """fn as a function of its differentiable inputs alone (the others fixed), to its floating-point outputs."""

    def fn(*differentiable: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = list(inputs)
        for i, x in zip(subject.differentiable, differentiable):
            full[i] = x
        return tuple(out for out in as_tuple(subject.fn(*full)) if _floating(out))

    return fn


def _floating(output: object) -> bool:
    return isinstance(output, torch.Tensor) and output.is_floating_point()


def _eager_jacobian(subject: Subject, inputs: list[Any]) -> list[list[torch.Tensor]]:
    """∂output_j/∂inputs[i] for every output j and differentiable input i, from fn's own backward,
    one row at a time."""
    primals = tuple(inputs[i] for i in subject.differentiable)
    jacobian = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]  # torch leaves it untyped
        _of_differentiable(subject, inputs), primals, vectorize=False
    )
    return [list(per_output) for per_output in jacobian]


def _jacobian_inputs(subject: Subject) -> list[Any]:
    samples = _samples(subject, JACOBIAN_SAMPLES) if subject.batched else None
    return subject.inputs(requires=(), samples=samples)


@verifies(
    "jacrev",
    "as for vmap: jacrev runs the backward under vmap",
)
def check_jacrev(subject: Subject) -> str:
    """Torch.func.jacrev gives the Jacobian built from one eager backward per output element."""
    _transformable(subject, vmaps_forward=False)
    inputs = _jacobian_inputs(subject)
    primals = tuple(inputs[i] for i in subject.differentiable)
    argnums = tuple(range(len(primals)))
    try:
        transformed = torch.func.jacrev(_of_differentiable(subject, inputs), argnums=argnums)(*primals)
    except RuntimeError as error:
        raise _custom_op_refused(subject, error) from None
    pairs = [
        (f"d output[{j}] / d inputs[{i}]", mine, eager)
        for j, (transformed_j, eager_j) in enumerate(zip(transformed, _eager_jacobian(subject, inputs)))
        for i, mine, eager in zip(subject.differentiable, transformed_j, eager_j)
    ]
    return subject.compare(pairs)


@verifies(
    "jvp",
    "a jvp staticmethod whose formula differs from the backward's",
)
def check_jvp(subject: Subject) -> str:
    """Forward mode: torch.func.jvp gives the Jacobian times a tangent."""
    if isinstance(subject.fn, torch._library.custom_ops.CustomOpDef):
        raise NotApplicable("a torch.library custom op has no forward mode: register_autograd gives reverse mode only")
    _transformable(subject, vmaps_forward=False)
    inputs = _jacobian_inputs(subject)
    generator = torch.Generator().manual_seed(subject.seed + 1)
    tangents = tuple(
        torch.randn(inputs[i].shape, generator=generator, dtype=inputs[i].dtype).to(inputs[i].device)
        for i in subject.differentiable
    )

    primals = tuple(inputs[i] for i in subject.differentiable)
    try:
        forward = torch.func.jvp(_of_differentiable(subject, inputs), primals, tangents)[1]  # (outputs, tangents)
    except NotImplementedError as error:
        if "jvp" in str(error):
            raise NotApplicable("fn's Function defines no jvp staticmethod (forward mode)") from None
        raise
    pairs = []
    for j, (out, jacobians) in enumerate(zip(forward, _eager_jacobian(subject, inputs))):
        products = (J.reshape(out.numel(), -1) @ t.reshape(-1) for J, t in zip(jacobians, tangents))
        expected = cast(torch.Tensor, sum(products))  # Σ_i J_i t_i, over at least one input
        pairs.append((f"output[{j}] tangent", out, expected.reshape(out.shape)))
    return subject.compare(pairs)
