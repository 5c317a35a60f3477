"""The derivation once more, in plain NumPy: no torch, no autograd, only the formulas.

The 2-3-1 sigmoid network without biases, torch's (out, in) weight convention:
x (5, 2), W1 (3, 2), W2 (1, 3), and the cost J = ½ Σ (y − ŷ)².
"""

import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def derive(x, y, W1, W2):
    # Forward: z = a_prev Wᵀ, a = σ(z).
    z1 = x @ W1.T  # (5, 3)
    a1 = sigmoid(z1)  # (5, 3)
    z2 = a1 @ W2.T  # (5, 1)
    y_hat = sigmoid(z2)  # (5, 1)
    J = 0.5 * np.sum((y - y_hat) ** 2)

    # Backward, with σ'(z) = σ(z)(1 − σ(z)) taken from the outputs.
    delta2 = (y_hat - y) * y_hat * (1 - y_hat)  # δ2 = (ŷ − y) ⊙ σ'(z2): (5, 1)
    dJ_dW2 = delta2.T @ a1  # ∂J/∂W2 = δ2ᵀ a1: (1, 3)
    delta1 = (delta2 @ W2) * a1 * (1 - a1)  # δ1 = (δ2 W2) ⊙ σ'(z1): (5, 3)
    dJ_dW1 = delta1.T @ x  # ∂J/∂W1 = δ1ᵀ x: (3, 2)

    # The per-sample view: each sample's own term of ∂J/∂W2, each of W2's shape.
    per_sample_dJ_dW2 = delta2[:, :, None] * a1[:, None, :]  # δ2,n a1,nᵀ: (5, 1, 3)

    return dict(
        z1=z1,
        a1=a1,
        z2=z2,
        y_hat=y_hat,
        J=J,
        delta2=delta2,
        delta1=delta1,
        dJ_dW2=dJ_dW2,
        dJ_dW1=dJ_dW1,
        per_sample_dJ_dW2=per_sample_dJ_dW2,
    )


def gradient_descent_step(W1, W2, dJ_dW1, dJ_dW2, lr):
    """W ← W − η ∂J/∂W."""
    return W1 - lr * dJ_dW1, W2 - lr * dJ_dW2
