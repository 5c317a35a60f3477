"""Layer normalisation, worked on a 2×3 input (torchbp/layers/layer_norm.py).

μ, var and rstd over each row's features, x̃ = (x − μ) · rstd and a = x̃ ⊙ γ + β; given g = ∂J/∂a,
∂J/∂x̃ = g ⊙ γ, ∂J/∂β = Σ_n g_n, ∂J/∂γ = Σ_n g_n ⊙ x̃_n and
∂J/∂x = rstd · (∂J/∂x̃ − mean_d(∂J/∂x̃) − x̃ · mean_d(∂J/∂x̃ ⊙ x̃)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import torchbp.functional
from experiments.derivation.example import agree, agreement_table, matrix

X = [[1.0, 2.0, 4.0], [-1.0, 0.5, 3.0]]
GAMMA = [1.5, -0.5, 2.0]
BETA = [0.1, 0.2, -0.3]
G = [[0.3, -0.6, 0.2], [-0.4, 0.1, 0.5]]  # g = ∂J/∂a, as the layers above would hand it down
EPS = 1e-5


def numpy_way(x, gamma, beta, g) -> dict[str, np.ndarray]:
    mu = x.mean(1, keepdims=True)  # over the features: (2, 1)
    var = ((x - mu) ** 2).mean(1, keepdims=True)
    rstd = 1 / np.sqrt(var + EPS)  # 1/√(var + ε): (2, 1)
    x_tilde = (x - mu) * rstd
    dJ_dx_tilde = g * gamma  # ∂J/∂x̃ = g ⊙ γ
    direct = rstd * dJ_dx_tilde  # x̃_d holds x_d directly
    through_mu = -rstd * dJ_dx_tilde.mean(1, keepdims=True)  # through μ
    through_rstd = -rstd * x_tilde * (dJ_dx_tilde * x_tilde).mean(1, keepdims=True)  # through rstd
    return dict(
        mu=mu,
        var=var,
        rstd=rstd,
        x_tilde=x_tilde,
        dJ_dx_tilde=dJ_dx_tilde,
        direct=direct,
        through_mu=through_mu,
        through_rstd=through_rstd,
        a=x_tilde * gamma + beta,
        dJ_dx=direct + through_mu + through_rstd,
        dJ_dgamma=(g * x_tilde).sum(0),
        dJ_dbeta=g.sum(0),
    )


def code_way(x, gamma, beta, g, layer_norm) -> dict[str, np.ndarray]:
    """a and the three gradients from ``layer_norm`` (F.layer_norm's signature), with ∂J/∂a = g."""
    x, gamma, beta = (t.clone().requires_grad_() for t in (x, gamma, beta))
    a = layer_norm(x, (x.shape[1],), gamma, beta, EPS)
    a.backward(g)
    values = dict(a=a, dJ_dx=x.grad, dJ_dgamma=gamma.grad, dJ_dbeta=beta.grad)
    return {name: value.detach().numpy() for name, value in values.items()}


def three_ways() -> dict:
    x, gamma, beta, g = (torch.tensor(t, dtype=torch.float64) for t in (X, GAMMA, BETA, G))
    ways = {
        "NumPy": numpy_way(x.numpy(), gamma.numpy(), beta.numpy(), g.numpy()),
        "torchbp": code_way(x, gamma, beta, g, torchbp.functional.layer_norm),
        "autograd": code_way(x, gamma, beta, g, F.layer_norm),
    }
    return dict(
        x=x.numpy(), gamma=gamma.numpy(), beta=beta.numpy(), g=g.numpy(), values=ways["NumPy"], differences=agree(ways)
    )


def blocks(numbers: dict) -> dict[str, str]:
    v = numbers["values"]
    return {
        "layer-norm-forward": "\n\n".join(
            [
                matrix("x", numbers["x"]),
                matrix("γ", numbers["gamma"]),
                matrix("β", numbers["beta"]),
                matrix("μ = mean_d(x), over each row's features", v["mu"]),
                matrix("var = mean_d((x − μ)²)", v["var"]),
                matrix(f"rstd = 1/√(var + {EPS:g})", v["rstd"]),
                matrix("x̃ = (x − μ) · rstd", v["x_tilde"]),
                matrix("a = x̃ ⊙ γ + β", v["a"]),
            ]
        ),
        "layer-norm-backward": "\n\n".join(
            [
                matrix("g = ∂J/∂a", numbers["g"]),
                matrix("∂J/∂β = Σ_n g_n", v["dJ_dbeta"]),
                matrix("∂J/∂γ = Σ_n g_n ⊙ x̃_n", v["dJ_dgamma"]),
                matrix("∂J/∂x̃ = g ⊙ γ", v["dJ_dx_tilde"]),
                matrix("directly:  rstd · ∂J/∂x̃", v["direct"]),
                matrix("through μ:  −rstd · mean_d(∂J/∂x̃)", v["through_mu"]),
                matrix("through rstd:  −rstd · x̃ · mean_d(∂J/∂x̃ ⊙ x̃)", v["through_rstd"]),
                matrix("∂J/∂x, their sum", v["dJ_dx"]),
            ]
        ),
        "layer-norm-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "layer-norm-forward": "Layer normalisation of a 2×3 input: forward",
    "layer-norm-backward": "Backward, from a given g = ∂J/∂a",
    "layer-norm-three-ways": "NumPy, torchbp and autograd agree",
}

PATH = "torchbp/layers/layer_norm.py"
CODE = [
    ("rstd = 1/√(var + ε)", PATH, "rstd = torch.rsqrt(centered.square().mean(over_d, keepdim=True) + eps)"),
    ("x̃ = (x − μ) · rstd", PATH, "else centred * rstd, rstd"),
    ("a = x̃ ⊙ γ + β", PATH, "return torch.native_layer_norm(input, normalized_shape"),
    ("∂J/∂x̃ = g ⊙ γ", PATH, "g_hat = g * weight if weight is not None else g"),
    (
        "∂J/∂x = rstd · (∂J/∂x̃ − mean_d(∂J/∂x̃) − x̃ · mean_d(∂J/∂x̃ ⊙ x̃))",
        PATH,
        "grad_x = rstd * (g_hat - mean_g_hat - x_hat * mean_g_hat_x_hat)",
    ),
    ("∂J/∂γ = Σ_n g_n ⊙ x̃_n", PATH, "if own else g * x_hat, over_n)"),
    ("∂J/∂β = Σ_n g_n", PATH, "grad_bias = _sum_over_samples(g, over_n)"),
]
