"""Batch normalisation, worked on a batch of four samples of two channels (torchbp/layers/batch_norm.py).

Layer normalisation with the axes exchanged: per channel, μ, var and rstd are taken over the M positions of the
batch, x̃ = (x − μ) · rstd and a = x̃ ⊙ γ + β; given g = ∂J/∂a, ∂J/∂β = Σ_m g, ∂J/∂γ = Σ_m g ⊙ x̃ and, in
training mode, ∂J/∂x = (γ rstd / M)(M g − Σ_m g − x̃ Σ_m g ⊙ x̃); in eval mode ∂J/∂x = γ rstd g, rstd the
running one. The running statistics follow each training batch:
running ← (1 − momentum) running + momentum · (μ, var·M/(M − 1)), the momentum 1/k for the k-th batch if None.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
import torchbp.layers.batch_norm
from experiments.derivation.example import agree, agreement_table, matrix

X = [[1.0, 0.5], [2.0, -1.0], [4.0, 3.0], [-1.0, 1.5]]  # four samples (rows) of two channels (columns)
GAMMA = [1.5, -0.5]
BETA = [0.1, 0.2]
G = [[0.3, -0.6], [-0.4, 0.1], [0.2, 0.5], [0.5, -0.2]]  # g = ∂J/∂a, as the layers above would hand it down
X_NEXT = [[0.0, 2.0], [3.0, 1.0], [2.0, 0.0], [3.0, 3.0]]  # a second batch, for the cumulative average
EPS = 1e-5
MOMENTUM = 0.1


def statistics(x) -> tuple[np.ndarray, np.ndarray]:
    """μ and the biased var of each channel (column), over the batch (the rows)."""
    return x.mean(0), ((x - x.mean(0)) ** 2).mean(0)


def numpy_way(x, gamma, beta, g) -> dict[str, np.ndarray]:
    M = x.shape[0]
    mu, var = statistics(x)
    rstd = 1 / np.sqrt(var + EPS)
    x_tilde = (x - mu) * rstd
    dJ_dx_tilde = g * gamma  # ∂J/∂x̃ = g ⊙ γ
    direct = rstd * dJ_dx_tilde  # x̃_m holds x_m directly
    through_mu = -rstd * dJ_dx_tilde.mean(0)  # through μ: one number per channel
    through_rstd = -rstd * x_tilde * (dJ_dx_tilde * x_tilde).mean(0)  # through rstd
    sum_g, sum_g_x_tilde = g.sum(0), (g * x_tilde).sum(0)
    compact = gamma * rstd / M * (M * g - sum_g - x_tilde * sum_g_x_tilde)
    g_first = np.zeros_like(g)
    g_first[0] = g[0]  # g on sample 1 alone
    dJ_dx_first = gamma * rstd / M * (M * g_first - g_first.sum(0) - x_tilde * (g_first * x_tilde).sum(0))
    # the running statistics, from torch.nn.BatchNorm1d's buffers at construction: 0 and 1
    running_mean = (1 - MOMENTUM) * 0 + MOMENTUM * mu
    running_var = (1 - MOMENTUM) * 1 + MOMENTUM * var * M / (M - 1)
    # eval mode, by these running statistics: a is affine in x
    rstd_running = 1 / np.sqrt(running_var + EPS)
    x_tilde_eval = (x - running_mean) * rstd_running
    # momentum None: 1/k for the k-th batch, the cumulative average of the batches' statistics
    mu_next, var_next = statistics(np.asarray(X_NEXT))
    cumulative_mean, cumulative_var = np.zeros(2), np.ones(2)
    for k, (mu_k, var_k) in enumerate([(mu, var), (mu_next, var_next)], start=1):
        cumulative_mean = (1 - 1 / k) * cumulative_mean + 1 / k * mu_k
        cumulative_var = (1 - 1 / k) * cumulative_var + 1 / k * var_k * M / (M - 1)
    return dict(
        mu=mu,
        var=var,
        rstd=rstd,
        x_tilde=x_tilde,
        a=x_tilde * gamma + beta,
        dJ_dx_tilde=dJ_dx_tilde,
        direct=direct,
        through_mu=through_mu,
        through_rstd=through_rstd,
        dJ_dx=direct + through_mu + through_rstd,
        compact=compact,
        dJ_dgamma=sum_g_x_tilde,
        dJ_dbeta=sum_g,
        g_first=g_first,
        dJ_dx_first=dJ_dx_first,
        running_mean=running_mean,
        running_var=running_var,
        rstd_running=rstd_running,
        a_eval=x_tilde_eval * gamma + beta,
        dJ_dx_eval=gamma * rstd_running * g,
        dJ_dgamma_eval=(g * x_tilde_eval).sum(0),
        mu_next=mu_next,
        var_next=var_next,
        cumulative_mean=cumulative_mean,
        cumulative_var=cumulative_var,
    )


def code_way(x, gamma, beta, g, batch_norm, batch_norm_1d) -> dict[str, np.ndarray]:
    """What ``batch_norm`` (F.batch_norm's signature) and the module ``batch_norm_1d`` compute, with ∂J/∂a = g."""
    values = {}
    running_mean, running_var = torch.zeros(2, dtype=x.dtype), torch.ones(2, dtype=x.dtype)
    x_, gamma_, beta_ = (t.clone().requires_grad_() for t in (x, gamma, beta))
    a = batch_norm(x_, running_mean, running_var, gamma_, beta_, True, MOMENTUM, EPS)  # updates the two in place
    a.backward(g)
    values |= dict(a=a, dJ_dx=x_.grad, dJ_dgamma=gamma_.grad, dJ_dbeta=beta_.grad)
    values |= dict(running_mean=running_mean.clone(), running_var=running_var.clone())
    x_ = x.clone().requires_grad_()
    batch_norm(x_, None, None, gamma, beta, True, MOMENTUM, EPS).backward(torch.cat([g[:1], torch.zeros_like(g[1:])]))
    values["dJ_dx_first"] = x_.grad
    x_, gamma_ = x.clone().requires_grad_(), gamma.clone().requires_grad_()
    a = batch_norm(x_, running_mean, running_var, gamma_, beta, False, MOMENTUM, EPS)  # eval: the running ones
    a.backward(g)
    values |= dict(a_eval=a, dJ_dx_eval=x_.grad, dJ_dgamma_eval=gamma_.grad)
    module = batch_norm_1d(2, momentum=None, dtype=x.dtype)  # 1/k for the k-th batch
    module(x), module(torch.tensor(X_NEXT, dtype=x.dtype))
    values |= dict(cumulative_mean=module.running_mean, cumulative_var=module.running_var)
    return {name: value.detach().numpy() for name, value in values.items()}


def three_ways() -> dict:
    x, gamma, beta, g = (torch.tensor(t, dtype=torch.float64) for t in (X, GAMMA, BETA, G))
    ways = {
        "NumPy": numpy_way(x.numpy(), gamma.numpy(), beta.numpy(), g.numpy()),
        "torchbp": code_way(x, gamma, beta, g, torchbp.functional.batch_norm, torchbp.layers.batch_norm.BatchNorm1d),
        "autograd": code_way(x, gamma, beta, g, F.batch_norm, torch.nn.BatchNorm1d),
    }
    return dict(
        x=x.numpy(), gamma=gamma.numpy(), beta=beta.numpy(), g=g.numpy(), values=ways["NumPy"], differences=agree(ways)
    )


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    M = len(numbers["x"])
    return {
        "batch-norm-forward": "\n\n".join(
            [
                matrix("x, a row per sample, a column per channel", numbers["x"]),
                matrix("γ", numbers["gamma"]),
                matrix("β", numbers["beta"]),
                matrix("μ = mean over the batch", v["mu"]),
                matrix("var = mean over the batch of (x − μ)²", v["var"]),
                matrix(f"rstd = 1/√(var + {EPS:g})", v["rstd"]),
                matrix("x̃ = (x − μ) · rstd", v["x_tilde"]),
                matrix("a = x̃ ⊙ γ + β", v["a"]),
            ]
        ),
        "batch-norm-backward": "\n\n".join(
            [
                matrix("g = ∂J/∂a", numbers["g"]),
                matrix("∂J/∂β = Σ_m g", v["dJ_dbeta"]),
                matrix("∂J/∂γ = Σ_m g ⊙ x̃", v["dJ_dgamma"]),
                matrix("∂J/∂x̃ = g ⊙ γ", v["dJ_dx_tilde"]),
                matrix("directly:  rstd · ∂J/∂x̃", v["direct"]),
                matrix("through μ:  −rstd · mean_m(∂J/∂x̃)", v["through_mu"]),
                matrix("through rstd:  −rstd · x̃ · mean_m(∂J/∂x̃ ⊙ x̃)", v["through_rstd"]),
                matrix("∂J/∂x, their sum", v["dJ_dx"]),
                matrix("(γ rstd / M)(M g − Σ_m g − x̃ Σ_m g ⊙ x̃), the same", v["compact"]),
            ]
        ),
        "batch-norm-coupling": "\n\n".join(
            [
                matrix("g on sample 1 alone", v["g_first"]),
                matrix("∂J/∂x: every sample's", v["dJ_dx_first"]),
            ]
        ),
        "batch-norm-eval": "\n\n".join(
            [
                matrix(f"running_mean ← {1 - MOMENTUM:g} · 0 + {MOMENTUM:g} μ", v["running_mean"]),
                matrix(f"running_var ← {1 - MOMENTUM:g} · 1 + {MOMENTUM:g} var · {M}/{M - 1}", v["running_var"]),
                matrix(f"rstd_running = 1/√(running_var + {EPS:g})", v["rstd_running"]),
                matrix("eval:  a = (x − running_mean) · rstd_running ⊙ γ + β", v["a_eval"]),
                matrix("eval:  ∂J/∂x = γ rstd_running g", v["dJ_dx_eval"]),
            ]
        ),
        "batch-norm-cumulative": "\n\n".join(
            [
                matrix("the second batch", np.asarray(X_NEXT)),
                matrix("its μ", v["mu_next"]),
                matrix("its var", v["var_next"]),
                matrix("running_mean after 2 batches, momentum 1/k: (μ₁ + μ₂)/2", v["cumulative_mean"]),
                matrix(f"running_var after 2 batches: (var₁ + var₂)/2 · {M}/{M - 1}", v["cumulative_var"]),
            ]
        ),
        "batch-norm-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "batch-norm-forward": "Batch normalisation of 4 samples of 2 channels: forward, training mode",
    "batch-norm-backward": "Backward, from a given g = ∂J/∂a",
    "batch-norm-coupling": "One sample's g moves every sample's gradient",
    "batch-norm-eval": f"The running statistics after this batch (momentum {MOMENTUM:g}), and eval mode by them",
    "batch-norm-cumulative": "momentum None: the cumulative average over two batches",
    "batch-norm-three-ways": "NumPy, torchbp and autograd agree",
}

PATH = "torchbp/layers/batch_norm.py"
CODE = [
    (
        "batch norm: a = x̃ ⊙ γ + β, with the batch's μ and rstd (native's forward)",
        PATH,
        "y, mean, rstd = torch.native_batch_norm(input, weight, bias, running_mean, running_var, training",
    ),
    (
        "running_var ← (1 − momentum) running_var + momentum · var M/(M − 1), momentum 1/k for the k-th batch if"
        " None (native's arithmetic, as written here)",
        PATH,
        "running_var  ← (1 − momentum) running_var  + momentum · var·M/(M − 1)",
    ),
    ("x̃ = (x − μ) · rstd, per channel", PATH, "centred = x - per_channel(mean, x)"),
    ("∂J/∂β = Σ_m g", PATH, "sum_g = g.sum(positions(g)) if need_bias"),
    ("∂J/∂γ = Σ_m g ⊙ x̃", PATH, "sum_g_x_hat = sum_of_products(g, x_hat, in_place)"),
    (
        "training: ∂J/∂x = γ rstd (g − mean_m g − x̃ mean_m(g ⊙ x̃))",
        PATH,
        "through_mu, through_sigma = -scale * sum_g / M, -scale * sum_g_x_hat / M",
    ),
    (
        "eval: ∂J/∂x = γ rstd g",
        PATH,
        "return torch.mul(g, per_channel(scale, g), out=x_hat if in_place else None), sum_g_x_hat",
    ),
    (
        "per-sample gradients refuse the batch's statistics",
        PATH,
        "so every sample's output depends on every other sample and no",
    ),
]
