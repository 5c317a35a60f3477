"""The second corpus: autograd Functions and custom ops written as people write them in the wild, with the rows
verify must fail for each (exactly), and the words each failure's fix must contain (its actual cause).

Kept apart from tests/verify_corpus.py, whose entries are one planted mistake each beside a twin done right:
these are styles (old-style Functions, classmethods, ctx.saved_variables, a view output, index inputs, a
derivative saved in forward, deliberately non-derivative backwards, torch.library custom ops), most of them
correct, and a correct one must fail nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd import Function


class Wild(NamedTuple):
    name: str
    fn: Callable
    reference: Callable | None
    inputs: Callable[[], tuple]
    options: dict  # verify's keyword options (compile_backend: aot_eager unless given)
    fails: frozenset  # exactly the rows it must fail (empty: a correct Function)
    fixes: dict  # row: words its fix must contain


def examples(*shapes: tuple) -> tuple:
    generator = torch.Generator().manual_seed(3)
    return tuple(torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes)


def positive() -> tuple:
    return (examples((6, 4))[0].abs() + 0.1,)


def with_a_zero() -> tuple:
    (x,) = positive()
    return (torch.cat([x, torch.zeros(1, 4, dtype=torch.float64)]),)


def features() -> tuple:
    return examples((6, 4))


# -- autograd Functions -----------------------------------------------------------------------------


class OldStyleSquare(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class SavedVariablesSquare(OldStyleSquare):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_variables
        return 2 * x * g


class ClassMethodSquare(Function):
    generate_vmap_rule = True

    @classmethod
    def forward(cls, x):
        return x * x

    @classmethod
    def setup_context(cls, ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class FirstTwoColumns(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x[..., :2]  # a view, which PyTorch refuses to let be written in place

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.features = inputs[0].shape[-1]

    @staticmethod
    def backward(ctx, g):
        return F.pad(g, (0, ctx.features - 2))


class SortValues(Function):
    """sorted values along the last dimension, given the permutation (an index input of another shape)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, order):
        return x.gather(-1, order)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.features = inputs[0].shape[-1]

    @staticmethod
    def backward(ctx, g):
        (order,) = ctx.saved_tensors
        return g.new_zeros(*g.shape[:-1], ctx.features).scatter_add(-1, order, g), None


def sort_inputs() -> tuple:
    (x,) = examples((6, 5))
    return x, x.argsort(-1)[..., :3]


class CubeSavingItsDerivative(Function):
    """PyTorch's own example: dx = 3x² returned and saved beside x."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3, 3 * x**2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, grad_output, grad_dx):
        x, dx = ctx.saved_tensors
        return grad_output * dx + grad_dx * 6 * x


def cube(x):
    return CubeSavingItsDerivative.apply(x)[0]


class GradientReversal(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return -g


class RoundStraightThrough(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.round(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


class SquareRoot(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2 * y)


class SoftmaxOverDimOne(Function):
    """Softmax over dim=1, written for (N, C) logits as most code is: right for a batch, but one sample (what
    vmap passes) has no dimension 1."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.softmax(dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return p * (g - (g * p).sum(dim=1, keepdim=True))


class ConvolutionWeightOverTheBatch(Function):
    """A 2-d convolution (stride 1, no padding) whose weight gradient is one convolution with the batch as its
    channels, conv2d(xᵀ, δᵀ), as many hand-written convolutions compute it: right eagerly and compiled with a
    fixed batch; the backend cannot order its strides with the batch size symbolic, and an empty batch gives the
    weight gradient no output channels."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return F.conv2d(x, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.to(x.dtype)  # autocast's lower precision, back to the saved input's
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, w, g)
        if ctx.needs_input_grad[1]:
            gw = F.conv2d(x.transpose(0, 1), g.transpose(0, 1)).transpose(0, 1)  # Σ over the batch, as channels
        return gx, gw


def images() -> tuple:
    return examples((4, 2, 6, 6), (3, 2, 3, 3))


# -- torch.library custom ops -----------------------------------------------------------------------


def _swish_backward(ctx, g):
    (x,) = ctx.saved_tensors
    s = torch.sigmoid(x)
    return g * (s + x * s * (1 - s))


def _save_input(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _swish_vmap(op):
    def rule(info, in_dims, x):
        return op(x), in_dims[0]

    return rule


def _custom_swish(name: str, fake: Callable | None, vmap: bool = True, autograd: bool = True):
    @torch.library.custom_op(f"torchbp_corpus::{name}", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)

    if fake is not None:
        op.register_fake(fake)
    if autograd:
        op.register_autograd(_swish_backward, setup_context=_save_input)
    if vmap:
        op.register_vmap(_swish_vmap(op))
    return op


swish = _custom_swish("swish", lambda x: torch.empty_like(x))
swish_without_a_fake = _custom_swish("swish_without_a_fake", None)
swish_with_a_wrong_fake = _custom_swish("swish_with_a_wrong_fake", lambda x: x.new_empty(x.shape[0]))
swish_without_vmap = _custom_swish("swish_without_vmap", lambda x: torch.empty_like(x), vmap=False)
swish_without_autograd = _custom_swish("swish_without_autograd", lambda x: torch.empty_like(x), autograd=False)


@torch.library.custom_op("torchbp_corpus::scale_in_place_undeclared", mutates_args=())
def scale_in_place_undeclared(x: torch.Tensor) -> torch.Tensor:
    y = x * 2
    x.mul_(2)  # writes into its input without mutates_args saying so
    return y


@scale_in_place_undeclared.register_fake
def _(x):
    return torch.empty_like(x)


scale_in_place_undeclared.register_autograd(lambda ctx, g: 2 * g, setup_context=lambda ctx, inputs, output: None)
scale_in_place_undeclared.register_vmap(lambda info, in_dims, x: (scale_in_place_undeclared(x), in_dims[0]))


class SwishInsideTheKernel(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * (s + x * s * (1 - s))


# An op whose autograd lives inside its CPU kernel (an autograd.Function called there), as older guides wrote
# them: eager autograd works by accident, and torch.compile's dispatcher never sees the formula.
_LIBRARY = torch.library.Library("torchbp_corpus", "FRAGMENT")
_LIBRARY.define("swish_autograd_in_kernel(Tensor x) -> Tensor")
torch.library.impl(_LIBRARY, "swish_autograd_in_kernel", "CPU")(lambda x: SwishInsideTheKernel.apply(x))
torch.library.register_fake("torchbp_corpus::swish_autograd_in_kernel", lambda x: torch.empty_like(x), lib=_LIBRARY)
swish_autograd_in_kernel = torch.ops.torchbp_corpus.swish_autograd_in_kernel.default


NOTHING: frozenset = frozenset()

CORPUS: list[Wild] = [
    Wild("old-style Function", OldStyleSquare.apply, lambda x: x * x, features, {},
         frozenset({"vmap", "vmap-grad", "jacrev", "jvp"}),
         {row: "move the ctx work to setup_context" for row in ("vmap", "vmap-grad", "jacrev", "jvp")}),
    Wild("ctx.saved_variables", SavedVariablesSquare.apply, lambda x: x * x, features, {},
         frozenset({"vmap", "vmap-grad", "jacrev", "jvp", "compile", "compile-dynamic"}),
         {"compile": "use ctx.saved_tensors", "compile-dynamic": "use ctx.saved_tensors",
          "vmap": "move the ctx work to setup_context"}),
    Wild("classmethods", ClassMethodSquare.apply, lambda x: x * x, features, {},
         frozenset({"compile", "compile-dynamic"}), {"compile": "@staticmethod", "compile-dynamic": "@staticmethod"}),
    Wild("a view output", FirstTwoColumns.apply, lambda x: x[..., :2], features, {}, NOTHING, {}),
    Wild("an index input of another shape", SortValues.apply, lambda x, order: x.gather(-1, order), sort_inputs,
         {}, NOTHING, {}),
    Wild("a derivative saved in forward", cube, lambda x: x**3, features, {}, NOTHING, {}),
    Wild("gradient reversal, with its recipe", GradientReversal.apply, lambda x: 2 * x.detach() - x, features,
         {"skip": ["gradcheck"]}, NOTHING, {}),
    Wild("a straight-through estimator, with its recipe", RoundStraightThrough.apply,
         lambda x: x + (torch.round(x) - x).detach(), features, {"skip": ["gradcheck"]}, NOTHING, {}),
    Wild("softmax over dim=1", SoftmaxOverDimOne.apply, lambda x: x.softmax(1), features, {},
         frozenset({"vmap", "vmap-grad"}),
         {"vmap": "counts dimensions from the front", "vmap-grad": "counts dimensions from the front"}),
    Wild("a weight gradient as a convolution over the batch", ConvolutionWeightOverTheBatch.apply, F.conv2d, images,
         {"compile_backend": "inductor"},  # the failure is inductor's, where the batch size is a symbol
         frozenset({"empty-batch", "vmap-grad", "compile-dynamic"}),
         {"compile-dynamic": "channel count is the batch", "empty-batch": "in shape [0, 2, 3, 3]",
          "vmap-grad": "needs the batch dimension"}),
    Wild("a sqrt at 0", SquareRoot.apply, torch.sqrt, with_a_zero, {}, frozenset({"gradcheck", "double-backward"}),
         {"double-backward": "singular point"}),
    Wild("a custom op", swish, F.silu, features, {}, NOTHING, {}),
    Wild("a custom op without a fake kernel", swish_without_a_fake, F.silu, features, {},
         frozenset({"compile", "compile-dynamic", "opcheck-fake", "opcheck-aot"}),
         {"compile": "register_fake", "compile-dynamic": "register_fake", "opcheck-fake": "register_fake"}),
    Wild("a custom op with a wrong fake kernel", swish_with_a_wrong_fake, F.silu, features, {},
         frozenset({"compile", "compile-dynamic", "opcheck-fake", "opcheck-aot"}),
         {"compile": "fake kernel", "compile-dynamic": "fake kernel", "opcheck-fake": "not the real kernel's"}),
    Wild("a custom op without a vmap rule", swish_without_vmap, F.silu, features, {}, frozenset({"vmap", "vmap-grad"}),
         {"vmap": "register_vmap", "vmap-grad": "register_vmap"}),
    Wild("a custom op without autograd", swish_without_autograd, F.silu, features, {},
         frozenset({"float64", "float32", "gradcheck", "double-backward", "non-contiguous", "empty-batch", "vmap-grad",
                    "compile", "compile-dynamic", "autocast", "in-place", "opcheck-aot"}),
         {"float64": "register_autograd", "gradcheck": "register_autograd"}),
    Wild("autograd inside an op's kernel", swish_autograd_in_kernel, F.silu, features, {},
         frozenset({"vmap", "vmap-grad", "jacrev", "jvp", "compile", "compile-dynamic", "opcheck-autograd",
                    "opcheck-fake", "opcheck-aot"}),
         {"opcheck-autograd": "inside its backend kernel", "compile": "see opcheck-autograd",
          "compile-dynamic": "see opcheck-autograd",
          "vmap": "move the ctx work to setup_context"}),
    Wild("a custom op writing an undeclared input", scale_in_place_undeclared, lambda x: 2 * x, features, {},
         frozenset({"opcheck-schema", "in-place", "gradcheck", "non-contiguous", "vmap"}),
         {"opcheck-schema": "mutates_args", "in-place": "must name it in mutates_args"}),
]  # fmt: skip
