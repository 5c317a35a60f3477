"""Layer normalisation, worked on a 2×3 input (torchbp/layers/layer_norm.py).

x̂ = (x − μ) · rstd and y = x̂ ⊙ γ + β over each row; given g = ∂J/∂y and ĝ = g ⊙ γ,
∂J/∂β = Σ_n g_n, ∂J/∂γ = Σ_n g_n ⊙ x̂_n and ∂J/∂x = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)).
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
G = [[0.3, -0.6, 0.2], [-0.4, 0.1, 0.5]]  # g = ∂J/∂y, as the layers above would hand it down
EPS = 1e-5


def numpy_way(x, gamma, beta, g) -> dict[str, np.ndarray]:
    mu = x.mean(1, keepdims=True)  # (2, 1)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + EPS)  # 1/√(σ² + ε): (2, 1)
    x_hat = (x - mu) * rstd
    g_hat = g * gamma  # ĝ = g ⊙ γ
    direct = rstd * g_hat  # through x̂ directly
    through_mu = -rstd * g_hat.mean(1, keepdims=True)  # through μ
    through_sigma = -rstd * x_hat * (g_hat * x_hat).mean(1, keepdims=True)  # through σ
    return dict(
        mu=mu,
        rstd=rstd,
        x_hat=x_hat,
        g_hat=g_hat,
        direct=direct,
        through_mu=through_mu,
        through_sigma=through_sigma,
        y=x_hat * gamma + beta,
        dJ_dx=direct + through_mu + through_sigma,
        dJ_dgamma=(g * x_hat).sum(0),
        dJ_dbeta=g.sum(0),
    )


def code_way(x, gamma, beta, g, layer_norm) -> dict[str, np.ndarray]:
    """y and the three gradients from ``layer_norm`` (F.layer_norm's signature), with ∂J/∂y = g."""
    x, gamma, beta = (t.clone().requires_grad_() for t in (x, gamma, beta))
    y = layer_norm(x, (x.shape[1],), gamma, beta, EPS)
    y.backward(g)
    values = dict(y=y, dJ_dx=x.grad, dJ_dgamma=gamma.grad, dJ_dbeta=beta.grad)
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
                matrix("μ = mean(x)", v["mu"]),
                matrix(f"rstd = 1/√(σ² + {EPS:g})", v["rstd"]),
                matrix("x̂ = (x − μ) · rstd", v["x_hat"]),
                matrix("y = x̂ ⊙ γ + β", v["y"]),
            ]
        ),
        "layer-norm-backward": "\n\n".join(
            [
                matrix("g = ∂J/∂y", numbers["g"]),
                matrix("∂J/∂β = Σ_n g_n", v["dJ_dbeta"]),
                matrix("∂J/∂γ = Σ_n g_n ⊙ x̂_n", v["dJ_dgamma"]),
                matrix("ĝ = g ⊙ γ", v["g_hat"]),
                matrix("through x̂:  rstd · ĝ", v["direct"]),
                matrix("through μ:  −rstd · mean(ĝ)", v["through_mu"]),
                matrix("through σ:  −rstd · x̂ · mean(ĝ ⊙ x̂)", v["through_sigma"]),
                matrix("∂J/∂x, their sum", v["dJ_dx"]),
            ]
        ),
        "layer-norm-three-ways": agreement_table(numbers["differences"]),
    }


TITLES = {
    "layer-norm-forward": "Layer normalisation of a 2×3 input: forward",
    "layer-norm-backward": "Backward, from a given g = ∂J/∂y",
    "layer-norm-three-ways": "NumPy, torchbp and autograd agree",
}

PATH = "torchbp/layers/layer_norm.py"
CODE = [
    ("rstd = 1/√(σ² + ε)", PATH, "rstd = torch.rsqrt(centered.square().mean(over_d, keepdim=True) + eps)"),
    ("x̂ = (x − μ) · rstd", PATH, "else centred * rstd, rstd"),
    ("y = x̂ ⊙ γ + β", PATH, "return torch.native_layer_norm(input, normalized_shape"),
    ("ĝ = g ⊙ γ", PATH, "g_hat = g * weight if weight is not None else g"),
    (
        "∂J/∂x = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))",
        PATH,
        "grad_x = rstd * (g_hat - mean_g_hat - x_hat * mean_g_hat_x_hat)",
    ),
    ("∂J/∂γ = Σ_n g_n ⊙ x̂_n", PATH, "if own else g * x_hat, over_n)"),
    ("∂J/∂β = Σ_n g_n", PATH, "grad_bias = _sum_over_samples(g, over_n)"),
]
