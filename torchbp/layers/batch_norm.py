r"""Batch normalisation a = x̃ ⊙ γ + β over the batch: its Function, checks, functional form, modules, rule.

Index letters, as in the derivation: c runs over the C channels (dimension 1),
and m over the M positions of one channel in the batch: every sample n and every
position l after the channels (BatchNorm1d's length, BatchNorm2d's rows and
columns), M = N·L. In training mode the statistics are the batch's, per channel:

    μ_c    = (1/M) Σ_m x_mc
    var_c  = (1/M) Σ_m (x_mc − μ_c)²            (biased: what normalises)
    rstd_c = 1 / √(var_c + ε)
    x̃_mc   = (x_mc − μ_c) · rstd_c
    a_mc   = x̃_mc γ_c + β_c                      (γ = 1 and β = 0 without affine)

LayerNorm's formulas with the axes exchanged: the means run over the batch, so
every sample's gradient depends on every other sample of the batch. In eval
mode (and in training mode with no running statistics kept, the other way
round) the running statistics stand in for μ and var, constants of the input:
a is an affine map of x. The running statistics follow each training batch:

    running_mean ← (1 − momentum) running_mean + momentum · μ
    running_var  ← (1 − momentum) running_var  + momentum · var·M/(M − 1)    (unbiased)

with momentum 1/t for the t-th batch where it is None (the cumulative average;
t is num_batches_tracked). g = ∂J/∂a is the upstream gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from torchbp.hand_derived import (
    HandDerivedFunction,
    HandDerivedModule,
    products_in_place,
    save_for_normalisation_backward,
)
from torchbp.table import Layer, register
from torchbp.validation import (
    FLOATING,
    LOWER_PRECISION_DTYPES,
    ArgumentError,
    ShapeError,
    shape_text,
    validate_floating_and_matching,
)

# -- input checks ------------------------------------------------------------------------


def _per_channel(t: Any, input: torch.Tensor) -> bool:
    """A (C,) tensor on input's device, of its dtype (or float32 beside a float16 or bfloat16 input, as native)."""
    return (
        isinstance(t, torch.Tensor)
        and t.shape == (input.shape[1],)
        and t.device == input.device
        and (t.dtype == input.dtype or (t.dtype == torch.float32 and input.dtype in LOWER_PRECISION_DTYPES))
    )


def validate_batch_norm(
    input: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, training: Any, momentum: Any, eps: Any
) -> None:
    """Floating input (N, C, *); weight, bias and the running statistics (C,) or None, on its device, of its dtype
    (or float32 beside a float16 or bfloat16 input); running statistics both given or both None, and given in
    eval mode; more than one value per channel in training mode."""
    if (  # the common case, decided in a few comparisons; the checks below explain the others
        isinstance(input, torch.Tensor)
        and input.dtype in FLOATING
        and input.dim() >= 2
        and all(t is None or _per_channel(t, input) for t in (running_mean, running_var, weight, bias))
        and (running_mean is None) == (running_var is None)
        and (training or running_mean is not None)
        and _is_number(eps)
        and _is_number(momentum)
    ):
        return
    validate_floating_and_matching("batch_norm", input=input)
    if input.dim() < 2 and input.numel() == 0:  # nothing to normalise: native returns it, whatever its shape
        return
    if input.dim() < 2:
        raise ShapeError(f"batch_norm: expected input of shape (N, C, *), got {shape_text(input)}")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is None or _per_channel(t, input):
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (input.shape[1],):
            raise ShapeError(
                f"batch_norm: expected {name} of shape ({input.shape[1]},), one per channel of input "
                f"{shape_text(input)}, got {shape_text(t) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
        validate_floating_and_matching("batch_norm", input=input, **{name: t})
    if (running_mean is None) != (running_var is None):
        raise ArgumentError("batch_norm: expected running_mean and running_var both given or both None")
    if not training and running_mean is None:
        raise ArgumentError(
            "batch_norm: expected running_mean and running_var in eval mode (training=False), got None: "
            "eval mode normalises by them"
        )
    for name, value in (("eps", eps), ("momentum", momentum)):
        if not _is_number(value):
            raise TypeError(f"batch_norm: expected {name} to be a Python float, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the backward ------------------------------------------------------------------------


def positions(x: torch.Tensor) -> tuple[int, ...]:
    """The dimensions m runs over: every one but the channels'."""
    return (0, *range(2, x.dim()))


def per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor as (1, C, 1, …), to broadcast along x's channels."""
    return t.view(1, -1, *[1] * (x.dim() - 2))


def normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ = (x − μ) · rstd and rstd, μ and var over the batch: by operations that carry the second derivative."""
    centered = x - x.mean(positions(x), keepdim=True)  # x − μ
    rstd = torch.rsqrt(centered.square().mean(positions(x), keepdim=True) + eps)  # 1/√(var + ε): (1, C, 1, …)
    return centered * rstd, rstd.view(-1)


def normalized(
    x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, training: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ and rstd from the forward's μ and rstd (C,). Where the backward is itself differentiated in training
    mode, from x again by :func:`normalize` (the forward's are outputs that get no gradient); in eval mode μ and
    rstd are the running statistics, constants of x either way."""
    if training and torch.is_grad_enabled():
        return normalize(x, eps)
    centred = x - per_channel(mean, x)
    return centred.mul_(per_channel(rstd, x)) if products_in_place(x) else centred * per_channel(rstd, x), rstd


def batch_norm_backward(
    g: torch.Tensor,
    x: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor | None,
    weight: torch.Tensor | None,
    training: bool,
    eps: float,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Given g = ∂J/∂a, the gradients (∂J/∂x, ∂J/∂γ, ∂J/∂β), each only when needed.

    μ and rstd (C,) are the forward's: the batch's in training mode, the running ones in eval mode.
    A float16 or bfloat16 x beside float32 statistics is worked in float32, as native's mixed kernel does.
    """
    if g.numel() == 0:  # no values: every gradient is zero (a sum over nothing)
        channels = g.shape[1] if g.dim() >= 2 else 0
        zeros = g.new_zeros(channels, dtype=g.dtype if mean is None else mean.dtype)
        return (
            (torch.zeros_like(g) if need_x else None),
            (zeros if need_weight else None),
            (zeros if need_bias else None),
        )
    stats_dtype = mean.dtype if mean is not None else g.dtype
    out_dtype = g.dtype
    if g.dtype != stats_dtype:
        g, x = g.to(stats_dtype), None if x is None else x.to(stats_dtype)
    sum_g = g.sum(positions(g)) if need_bias or (need_x and training) else None  # Σ_m g = ∂J/∂β: (C,)
    grad_bias = sum_g if need_bias else None
    if not (need_x or need_weight):
        return None, None, grad_bias
    assert x is not None and mean is not None and rstd is not None  # saved whenever ∂J/∂x or ∂J/∂γ is needed
    in_place = products_in_place(g) and not torch.is_grad_enabled()  # nothing records this backward
    grad_x, grad_weight = three_terms(g, x, mean, rstd, weight, sum_g, training, eps, need_x, in_place)
    grad_x = None if grad_x is None else grad_x.to(out_dtype)
    return grad_x, (grad_weight if need_weight else None), grad_bias


def three_terms(
    g: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    sum_g: torch.Tensor | None,
    training: bool,
    eps: float,
    need_x: bool,
    in_place: bool,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(∂J/∂x, ∂J/∂γ), each term of ∂J/∂x one per-channel factor of g or x̃:

        ∂J/∂x = γ rstd g − γ rstd mean_m g − x̃ γ rstd mean_m(g ⊙ x̃)    (directly, through μ, through rstd)

    ``in_place`` (nothing records this backward): Σ_m g ⊙ x̃ is a dot product per sample and channel, and
    ∂J/∂x is written into x̃'s buffer by in-place operations, so the backward keeps one batch-sized tensor
    (about 100 µs on 32×16×16×16 float32, against 140 with a second one and broadcast ``addcmul``s; native's
    kernel, which makes two passes: 44); otherwise every operation is recorded, and where the backward is
    itself differentiated x̃ and rstd come from x again (see :func:`normalized`).
    """
    x_hat, rstd = normalized(x, mean, rstd, training, eps)  # (N, C, *), a new tensor, and (C,)
    sum_g_x_hat = sum_of_products(g, x_hat, in_place)  # Σ_m g ⊙ x̃ = ∂J/∂γ: (C,)
    if not need_x:
        return None, sum_g_x_hat
    scale = rstd if weight is None else rstd * weight.to(rstd.dtype)  # γ rstd: (C,)
    if not training:  # a is affine in x: ∂J/∂x = γ rstd g
        return torch.mul(g, per_channel(scale, g), out=x_hat if in_place else None), sum_g_x_hat
    assert sum_g is not None
    M = g.numel() // g.shape[1]
    through_mu, through_sigma = -scale * sum_g / M, -scale * sum_g_x_hat / M  # (C,) each
    directly = per_channel(scale, g)  # γ rstd, times g
    if in_place:
        grad_x = x_hat.mul_(per_channel(through_sigma, g)).add_(per_channel(through_mu, g))
        return grad_x.addcmul_(g, directly), sum_g_x_hat
    grad_x = torch.addcmul(per_channel(through_mu, g), x_hat, per_channel(through_sigma, g))
    return grad_x.addcmul(g, directly), sum_g_x_hat


def sum_of_products(g: torch.Tensor, x_hat: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Σ_m g ⊙ x̃ per channel: (C,). Where nothing records it, as a dot product over each sample's positions
    summed over the samples (``linalg.vecdot``: 23 µs against the product and its sum over (n, h, w)'s 34 on
    32×16×16×16 float32)."""
    if in_place:
        n, c = g.shape[:2]
        dots: torch.Tensor = torch.linalg.vecdot(g.reshape(n, c, -1), x_hat.reshape(n, c, -1))  # (N, C)
        return dots.sum(0)
    return (g * x_hat).sum(positions(g))


class BatchNormFunction(HandDerivedFunction):
    r"""a = x̃ ⊙ γ + β, normalised over the batch, with the backward derived by hand.

    ``BatchNormFunction.apply(input, running_mean, running_var, weight, bias, training, momentum, eps)``,
    as ``torch.nn.functional.batch_norm``. Given g = ∂J/∂a, per channel c, sums over the batch's
    M positions m:

    - ∂J/∂β = Σ_m g
    - ∂J/∂γ = Σ_m g ⊙ x̃
    - ∂J/∂x = γ rstd (g − (1/M) Σ_m g − x̃ (1/M) Σ_m g ⊙ x̃)     (training: the three-term gradient,
      through x̃ directly, through μ and through rstd)
    - ∂J/∂x = γ rstd g                                         (eval: the running statistics are constants)

    The forward is ``torch.native_batch_norm``, so a is native's to the bit and the running statistics are
    updated in place by native's own arithmetic (the formula in the module docstring), and like it
    ``apply`` returns (a, μ, rstd), not differentiable: the batch's in training mode, the running mean and
    1/√(running_var + ε) in eval mode (copies, so that a later training step may update the buffers before
    this backward runs). :func:`batch_norm` returns a alone. Saved: the input, μ and rstd when ∂J/∂x or
    ∂J/∂γ is asked for, γ when ∂J/∂x is. When the backward is itself differentiated in training mode, it
    computes μ and rstd again from the input, by operations that carry the second derivative.

    Gradients agree with native's to rounding: native's kernel accumulates the per-channel sums in double
    precision for float32 input, and forms ∂J/∂x as one affine map per channel.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        validate_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        if input.numel() == 0:  # no values: nothing to normalise or to track, as native (its kernel refuses them)
            channels = input.shape[1] if input.dim() >= 2 else 0
            return input.clone(), input.new_zeros(channels), input.new_ones(channels)
        y, mean, rstd = torch.native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)
        if not training:  # native returns no statistics in eval mode: the running ones, as they stand now
            assert running_mean is not None and running_var is not None  # validated: eval mode needs them
            mean, rstd = running_mean.clone(), torch.rsqrt(running_var + eps)
        return y, mean, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        x, _, _, weight, _, ctx.training, _, ctx.eps = inputs
        _, mean, rstd = output
        need_x, _, _, need_weight, _, _, _, _ = ctx.needs_input_grad
        save_for_normalisation_backward(ctx, x, mean, rstd, weight, need_x, need_weight)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, *_: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        if g is None:  # a took no part in J
            return (None,) * 8
        x, mean, rstd, weight = ctx.saved_tensors
        need_x, _, _, need_weight, need_bias, _, _, _ = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = batch_norm_backward(
            g, x, mean, rstd, weight, ctx.training, ctx.eps, need_x, need_weight, need_bias
        )
        return grad_x, None, None, grad_weight, grad_bias, None, None, None


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalisation, as torch.nn.functional.batch_norm, backward by BatchNormFunction: in training mode
    the batch's statistics (and the running ones, where given, updated in place), else the running ones."""
    if training and isinstance(input, torch.Tensor) and input.dim() >= 2:
        values = input.shape[0] * math.prod(input.shape[2:])
        if values == 1:  # as native's message and type
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if isinstance(eps, (int, float)) and (eps <= 0 if training else eps < 0):  # as native's messages and type
        sign = "positive during training" if training else "non-negative"
        raise ValueError(f"batch_norm eps must be {sign}, but got {eps}")
    y, _, _ = BatchNormFunction.apply(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return y  # type: ignore[no-any-return]


def _module_forward(module: torch.nn.modules.batchnorm._BatchNorm, input: torch.Tensor) -> torch.Tensor:
    """torch.nn's batch-norm forward with its functional form swapped: the same running statistics, the same
    num_batches_tracked, the same choice of the batch's or the running statistics."""
    module._check_input_dim(input)  # type: ignore[no-untyped-call]  # torch leaves it untyped
    momentum = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:  # the cumulative average: 1/t for the t-th batch
            momentum = 1.0 / float(module.num_batches_tracked)
    batch_statistics = module.training or (module.running_mean is None and module.running_var is None)
    tracked = not module.training or module.track_running_stats  # else the buffers are left alone
    return batch_norm(
        input,
        module.running_mean if tracked else None,
        module.running_var if tracked else None,
        module.weight,
        module.bias,
        batch_statistics,
        momentum,
        module.eps,
    )


class BatchNorm1d(HandDerivedModule, torch.nn.BatchNorm1d):
    r"""torch.nn.BatchNorm1d whose backward is :class:`BatchNormFunction`.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as torch.nn.BatchNorm1d.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, L)`; Output: the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _module_forward(self, input)


class BatchNorm2d(HandDerivedModule, torch.nn.BatchNorm2d):
    r"""torch.nn.BatchNorm2d whose backward is :class:`BatchNormFunction`.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as torch.nn.BatchNorm2d.

    Shape:
        - Input: :math:`(N, C, H, W)`; Output: the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _module_forward(self, input)


# -- the per-sample view ---------------------------------------------------------------
# With the running statistics (eval mode), x̃ is each sample's own and ∂J/∂γ = Σ_n Σ_l g_n ⊙ x̃_n,
# ∂J/∂β = Σ_n Σ_l g_n: kept apart, the terms are each sample's gradient. With the batch's statistics
# every sample's x̃ depends on the others, and no sample has a gradient of its own.


def per_sample_weight_grads(delta: torch.Tensor, a_prev: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """Σ_l g_n ⊙ x̃_n for every sample n, x̃ from the running statistics: shape (N, C)."""
    rstd = torch.rsqrt(module.running_var + module.eps)  # type: ignore[operator]
    x_hat = (a_prev - per_channel(module.running_mean, a_prev)) * per_channel(rstd, a_prev)  # type: ignore[arg-type]
    return (delta * x_hat).reshape(delta.shape[0], delta.shape[1], -1).sum(2)


def per_sample_bias_grads(delta: torch.Tensor) -> torch.Tensor:
    """Σ_l g_n for every sample n: shape (N, C)."""
    return delta.reshape(delta.shape[0], delta.shape[1], -1).sum(2)


class BatchNormPerSample:
    """A batch normalisation's per-sample rule, with its running statistics (eval mode): weight Σ_l g_n ⊙ x̃_n,
    bias Σ_l g_n. With the batch's statistics (training mode, or no running statistics) it refuses, before any
    forward: every sample's output depends on every other sample, so none has a gradient of its own."""

    def refusal(self, module: torch.nn.modules.batchnorm._BatchNorm) -> str | None:
        """Why this layer has no per-sample gradients as it stands (None: it has): asked before any forward."""
        if not (module.training or module.running_mean is None):
            return None
        remedy = (
            "call eval() on it (its running statistics then normalise)"
            if module.running_mean is not None
            else "construct it with track_running_stats=True and call eval() on it"
        )
        mode = "in training mode" if module.training else "without running statistics (track_running_stats=False)"
        return (
            f"{type(module).__name__}({module.num_features}) normalises {mode} by the batch's mean and variance, "
            "so every sample's output depends on every other sample and no sample has a gradient of its own; "
            f"{remedy}, or use GroupNorm or LayerNorm, which normalise each sample alone"
        )

    def grads(
        self, module: torch.nn.modules.batchnorm._BatchNorm, a_prev: torch.Tensor, delta: torch.Tensor, out: Any
    ) -> dict[str, torch.Tensor]:
        grads = {}
        if module.weight is not None and module.weight.requires_grad:
            grads["weight"] = per_sample_weight_grads(delta, a_prev, module)
        if module.bias is not None and module.bias.requires_grad:
            grads["bias"] = per_sample_bias_grads(delta)
        for name, grad in grads.items():
            if out.get(name) is not None:
                grads[name] = out[name].copy_(grad)
        return grads

    def norms_squared(
        self, module: torch.nn.modules.batchnorm._BatchNorm, a_prev: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        return sum(
            (grad.square().sum(1) for grad in self.grads(module, a_prev, delta, {}).values()),
            torch.zeros(delta.shape[0], dtype=delta.dtype, device=delta.device),
        )


RULE = BatchNormPerSample()
register(Layer(torch.nn.BatchNorm1d, BatchNorm1d, BatchNormFunction, batch_norm, per_sample=RULE))
register(Layer(torch.nn.BatchNorm2d, BatchNorm2d, BatchNormFunction, batch_norm, per_sample=RULE))
