"""The Gaussian error linear unit a = z Φ(z), exact (erf) and its tanh approximation: Functions, functional form
and module."""

from __future__ import annotations

import torch

from torchbp.hand_derived import ElementwiseFunction, HandDerivedModule, chain_rule, products_in_place
from torchbp.table import Layer, Step, register
from torchbp.validation import ArgumentError, validate_floating

APPROXIMATIONS = ("none", "tanh")
# The constants are written into the formulas as literals: under torch.compile(dynamic=True) a float read from a
# module's globals becomes an input of the graph, which an autograd.Function's backward cannot take (torch 2.13
# fails with "lift_tracked_freevar_to_input"). tests/test_activations.py checks each literal against its value:
# 0.7071067811865476 = 1/√2, 0.3989422804014327 = 1/√(2π), 0.7978845608028654 = √(2/π), 0.044715 = κ, 3κ = 0.134145.


def validate_approximate(approximate: object) -> None:
    if approximate not in APPROXIMATIONS:
        raise ArgumentError(f"gelu: expected approximate to be 'none' or 'tanh', got {approximate!r}")


class GELUFunction(ElementwiseFunction):
    r"""a = z Φ(z), Φ the standard normal's distribution function, with the backward derived by hand:
    ∂J/∂z = g ⊙ GELU'(z), GELU'(z) = Φ(z) + z φ(z).

    By the product rule, d(z Φ(z))/dz = Φ(z) + z Φ'(z), and Φ' is the normal density
    φ(z) = e^{−z²/2} / √(2π). Φ(z) = ½ (1 + erf(z/√2)). From the saved input z: the
    output a = z Φ(z) cannot give Φ(z) back where z = 0. Gradients agree with native's to
    rounding (native's kernel evaluates the same terms in its own vectorised order).
    """

    saves = "input"

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:  # z
        validate_floating("gelu", input)
        return torch.nn.functional.gelu(input)

    @staticmethod
    def derivative(z: torch.Tensor) -> torch.Tensor:
        own = products_in_place(z)  # nothing records this backward: its steps work in place on its new tensors
        cdf = normal_distribution(z, own)  # Φ(z) = ½ (1 + erf(z/√2))
        pdf = normal_density(z, own)  # φ(z) = e^{−z²/2} / √(2π)
        return cdf.addcmul_(z, pdf) if own else cdf + z * pdf  # Φ(z) + z φ(z)


def normal_distribution(z: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Φ(z) = ½ (1 + erf(z/√2)), a new tensor; with ``in_place`` each step after z/√2 works in place on it (on
    the CPU a new tensor the size of an activation can cost more than its arithmetic: its pages are fresh)."""
    scaled = z * 0.7071067811865476
    if in_place:
        return scaled.erf_().add_(1).mul_(0.5)
    return 0.5 * (1 + torch.erf(scaled))


def normal_density(z: torch.Tensor, in_place: bool) -> torch.Tensor:
    """φ(z) = e^{−z²/2} / √(2π), a new tensor; with ``in_place`` each step after z² works in place on it."""
    squared = z * z
    if in_place:
        return squared.mul_(-0.5).exp_().mul_(0.3989422804014327)
    return torch.exp(squared * -0.5) * 0.3989422804014327


class GELUTanhFunction(ElementwiseFunction):
    r"""a = ½ z (1 + tanh u), u = √(2/π) (z + κ z³), κ = 0.044715 (GELU's tanh approximation), with the
    backward derived by hand: ∂J/∂z = g ⊙ a'(z),

    a'(z) = ½ (1 + tanh u) + ½ z (1 − tanh² u) √(2/π) (1 + 3κ z²),

    the product rule on ½ z · (1 + tanh u), with d tanh u/dz = (1 − tanh² u) du/dz and
    du/dz = √(2/π) (1 + 3κ z²). From the saved input z. Gradients agree with native's to
    rounding.
    """

    saves = "input"

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:  # z
        validate_floating("gelu", input)
        return torch.nn.functional.gelu(input, approximate="tanh")

    @staticmethod
    def derivative(z: torch.Tensor) -> torch.Tensor:
        z_squared = z * z
        tanh_u = torch.tanh(0.7978845608028654 * (z + 0.044715 * z_squared * z))  # tanh u, u = √(2/π)(z + κ z³)
        du_dz = 0.7978845608028654 * (1 + 0.134145 * z_squared)  # du/dz = √(2/π)(1 + 3κ z²)
        return 0.5 * (1 + tanh_u) + 0.5 * z * (1 - tanh_u * tanh_u) * du_dz


FUNCTIONS: dict[str, type[ElementwiseFunction]] = {"none": GELUFunction, "tanh": GELUTanhFunction}


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(input), as torch.nn.functional.gelu, backward by GELUFunction (``approximate="none"``) or
    GELUTanhFunction (``"tanh"``)."""
    validate_approximate(approximate)
    return FUNCTIONS[approximate].apply(input)  # type: ignore[no-any-return]


class GELU(HandDerivedModule, torch.nn.GELU):
    r"""torch.nn.GELU whose backward is :class:`GELUFunction` or, with ``approximate="tanh"``,
    :class:`GELUTanhFunction`.

    .. math:: a = z \Phi(z), \qquad a'(z) = \Phi(z) + z \varphi(z)

    Args:
        approximate: ``"none"`` (erf) or ``"tanh"``, as torch.nn.GELU's; any other value is refused here, at
            construction (native refuses it at the first forward).

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, the same shape.
    """

    def __init__(self, approximate: str = "none") -> None:
        validate_approximate(approximate)
        super().__init__(approximate)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu(input, self.approximate)


# In the fused chain: one step whose constant argument is the approximation; each variant's own formula.
def step_forward(z: torch.Tensor, approximate: str) -> torch.Tensor:
    a: torch.Tensor = FUNCTIONS[approximate].forward(z)
    return a


def step_backward(delta: torch.Tensor, z: torch.Tensor, approximate: str, need_z: bool) -> tuple[torch.Tensor]:
    return (chain_rule(FUNCTIONS[approximate], delta, z),)


register(
    Layer(
        torch.nn.GELU,
        GELU,
        GELUFunction,
        gelu,
        step=Step(
            "gelu",
            step_forward,
            step_backward,
            reads="input",
            arity=1,
            arguments=lambda module: (module.approximate,),
            constants=(0,),
        ),
    )
)
