"""What the benchmark compares: each case a torchbp callable A and its reference B, on the same model and data."""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import torchbp
import torchbp.layers.conv2d
from experiments import seed
from experiments.bench.peers import OURS, PEERS, against
from experiments.lab.registry import EXPERIMENTS
from torchbp.layers import LAYERS
from torchbp.layers.conv2d import weight_gradient, weight_gradient_by_convolution
from torchbp.per_sample import per_sample_grad_norms, per_sample_grads


@dataclass
class Case:
    name: str
    a: str  # what A is
    b: str  # what B is
    make: Callable[[], tuple[Callable[[], object], Callable[[], object]]]
    target: float  # A / B at most
    memory_target: float | None = None  # peak memory A / B at most, where a target is set
    memory: tuple[str, str] | None = None  # (training setup, torchbp variant) whose peak memory to measure
    requires: str | None = None  # a module B needs (a peer library): without it the case is skipped


def square_mlp(width: int, layers: int, seed: int = 0, between=lambda width: [torch.nn.Sigmoid()]):
    """``layers`` linear layers of width × width with ``between(width)`` (a sigmoid) between them."""
    torch.manual_seed(seed)
    modules = [torch.nn.Linear(width, width)]
    for _ in range(layers - 1):
        modules += [*between(width), torch.nn.Linear(width, width)]
    return torch.nn.Sequential(*modules)


def conv_stack(channels: int, seed: int = 0) -> torch.nn.Sequential:
    """Two 3×3 convolutions with a ReLU between, ``channels`` → 2·channels → channels, padding 1."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 2 * channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(2 * channels, channels, 3, padding=1),
    )


def image_data(batch: int, channels: int, size: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, size, size)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def digits_cnn_setup(batch: int = 64):
    """digits-cnn's network on a batch of ``batch`` of the digits, in float32."""
    from experiments.digits_cnn import small_cnn
    from experiments.lab.data import load_digits
    from experiments.lab.registry import Config

    pixels, labels = load_digits()
    config = Config(steps=1, lr=1e-3, batch_size=batch, dtype="float32")
    x = pixels[:batch].reshape(-1, 1, 8, 8).float()
    return small_cnn(config), torch.nn.CrossEntropyLoss(), x, labels[:batch]


def wider_cnn_setup(batch: int = 64):
    """3 → 32 → 64 channels of 3×3 convolutions with ReLUs on 32×32 images, then a linear layer to 10 classes."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 32 * 32, 10),
    )
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    return network, torch.nn.CrossEntropyLoss(), images, torch.randint(0, 10, (batch,), generator=generator)


def resnet_block_setup(batch: int = 32, channels: int = 16, size: int = 16):
    """A ResNet basic block as digits-resnet builds it (conv-BN-ReLU-conv-BN, plus its input, ReLU) on
    ``channels`` × ``size`` × ``size`` images, then global average pooling, in training mode (batch statistics,
    running statistics updated), MSE against a target per channel."""
    from experiments.digits_resnet import Residual, conv_bn

    torch.manual_seed(0)
    block = torch.nn.Sequential(*conv_bn(channels, channels, 3), torch.nn.ReLU(), *conv_bn(channels, channels, 3))
    network = torch.nn.Sequential(Residual(block), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, channels, size, size, generator=generator)
    return network, torch.nn.MSELoss(), images, torch.randn(batch, channels, generator=generator)


# The CNNs whose per-sample gradients are timed against the peers (experiments/bench/peers.py).
PEER_NETWORKS = {
    "digits-cnn, batch 64": lambda: digits_cnn_setup(64),
    "digits-cnn, batch 256": lambda: digits_cnn_setup(256),
    "wider CNN (3→32→64 channels, 32×32), batch 64": wider_cnn_setup,
}


def mlp_data(width: int, batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, width, generator=generator), torch.randn(batch, width, generator=generator)


def per_sample_against_torch_func(width: int, layers: int, batch: int, reuse: bool = False):
    """torchbp's per-sample gradients (into reused buffers with ``reuse``) against torch.func's."""

    def make():
        native = square_mlp(width, layers)
        hand = torchbp.convert(native)
        x, y = mlp_data(width, batch)
        loss_fn = torchbp.nn.MSELoss(reduction="sum")
        params = {name: p.detach() for name, p in native.named_parameters()}

        def one_sample_loss(params, x_n, y_n):
            return F.mse_loss(torch.func.functional_call(native, params, (x_n[None],)), y_n[None], reduction="sum")

        vmapped = torch.func.vmap(torch.func.grad(one_sample_loss), in_dims=(None, 0, 0))
        buffers = per_sample_grads(hand, loss_fn, x, y) if reuse else None
        return (lambda: per_sample_grads(hand, loss_fn, x, y, out=buffers)), (lambda: vmapped(params, x, y))

    return make


def norms_against_formed_gradients(width: int, layers: int, batch: int):
    def make():
        hand = torchbp.convert(square_mlp(width, layers))
        x, y = mlp_data(width, batch)
        loss_fn = torchbp.nn.MSELoss(reduction="sum")

        def formed():
            grads = per_sample_grads(hand, loss_fn, x, y)
            return torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))

        return (lambda: per_sample_grad_norms(hand, loss_fn, x, y)), formed

    return make


def training_after_per_sample_use(width: int, layers: int, batch: int):
    """A torchbp training step on a model that per-sample gradients were taken from, against
    the same step on an untouched twin: what ordinary training pays for the feature."""

    def make():
        used, untouched = torchbp.convert(square_mlp(width, layers)), torchbp.convert(square_mlp(width, layers))
        x, y = mlp_data(width, batch)
        loss_fn = torchbp.nn.MSELoss()
        per_sample_grads(used, loss_fn, x, y)
        per_sample_grad_norms(used, loss_fn, x, y)

        def train_step(model, optimizer):
            def step():
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()

            return step

        return (
            train_step(used, torch.optim.SGD(used.parameters(), lr=0.1)),
            train_step(untouched, torch.optim.SGD(untouched.parameters(), lr=0.1)),
        )

    return make


TRAINING_SETUPS = {
    # name: (model, loss, inputs, target)
    "derivation": lambda: (
        seed.network(EXPERIMENTS["seed"].defaults),
        seed.HalfSumSquaredError(),
        *seed.samples(0, torch.float64, "cpu"),
    ),
    "mid": lambda: (square_mlp(256, 3), torch.nn.MSELoss(), *mlp_data(256, 64)),
    "compute-bound": lambda: (square_mlp(1024, 3), torch.nn.MSELoss(), *mlp_data(1024, 512)),
    "mid-tanh": lambda: (
        square_mlp(256, 3, between=lambda w: [torch.nn.Tanh()]),
        torch.nn.MSELoss(),
        *mlp_data(256, 64),
    ),
    "mid-relu": lambda: (
        square_mlp(256, 3, between=lambda w: [torch.nn.ReLU()]),
        torch.nn.MSELoss(),
        *mlp_data(256, 64),
    ),
    "mid-layernorm": lambda: (
        square_mlp(256, 3, between=lambda w: [torch.nn.LayerNorm(w), torch.nn.Tanh()]),
        torch.nn.MSELoss(),
        *mlp_data(256, 64),
    ),
    "mid-cross-entropy": lambda: (
        square_mlp(256, 3),
        torch.nn.CrossEntropyLoss(),
        mlp_data(256, 64)[0],
        torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(2)),
    ),
    "conv": lambda: (conv_stack(16), torch.nn.MSELoss(), *image_data(32, 16, 32)),
    "digits-cnn": digits_cnn_setup,
    "resnet-block": resnet_block_setup,
    "gpt": lambda: gpt_setup(),
}


def gpt_setup(batch: int = 32):
    """The gpt experiment's network on a batch of ``batch`` windows of its text, in float32."""
    from experiments.gpt import GPT, encoded_prose, windows

    alphabet, codes = encoded_prose()
    x, y = windows(codes)
    torch.manual_seed(0)
    return GPT(len(alphabet)), torch.nn.CrossEntropyLoss(), x[:batch], y[:batch]


def training_step(model, loss_fn, x, y) -> Callable[[], None]:
    """Forward, loss, backward and an SGD update."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


class NoOpNode(torch.autograd.Function):
    """y = x, with the backward ∂J/∂x = ∂J/∂y: a custom Function node that does no work, in the older form
    (``ctx`` in forward) that torchbp's eager calls take."""

    @staticmethod
    def forward(ctx, input):
        return input.view_as(input)

    @staticmethod
    def backward(ctx, g):
        return g


def with_a_node_per_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The floor of torchbp's per-layer path in eager mode: a copy of the native model whose every layer
    that torchbp has a hand-derived one for (the loss too) is followed by a :class:`NoOpNode`.

    The same native kernels, and one custom Function node per layer as the per-layer path has: what
    such a node costs by itself, before any formula, check or saved tensor of torchbp's.
    """
    model = copy.deepcopy(model)
    natives = tuple(layer.native for layer in LAYERS)
    for module in model.modules():
        if type(module) in natives:
            nodes = FUNCTIONS_PER_CALL.get(type(module), 1)
            module.forward = lambda *args, forward=module.forward, nodes=nodes, **kwargs: with_nodes(
                forward(*args, **kwargs), nodes
            )
    return model


# Layers whose torchbp module calls several Functions: MultiheadAttention's in-projection, attention and
# out-projection (self-attention's packed in-projection is one product).
FUNCTIONS_PER_CALL = {torch.nn.MultiheadAttention: 3}


def with_nodes(output: Any, nodes: int) -> Any:
    """The output, or each tensor of an output pair, through ``nodes`` :class:`NoOpNode` in a row."""
    if isinstance(output, tuple):
        return tuple(with_nodes(o, nodes) if isinstance(o, torch.Tensor) else o for o in output)
    for _ in range(nodes):
        output = NoOpNode.apply(output)
    return output


VARIANTS = {"native": lambda m: m, "per-layer": torchbp.convert, "fused": torchbp.fuse, "floor": with_a_node_per_layer}


def steps_against_native(setup: str, variant: str = "per-layer", step=training_step):
    """A training step of the torchbp model (per-layer or fused; or the floor of the per-layer path, see
    :func:`with_a_node_per_layer`) against native's, both made by ``step`` (:func:`training_step`, or
    :func:`compiled_training_step`)."""

    def make():
        model, loss_fn, x, y = TRAINING_SETUPS[setup]()
        convert_loss = with_a_node_per_layer if variant == "floor" else torchbp.convert
        hand = step(VARIANTS[variant](model), convert_loss(loss_fn), x, y)
        native = step(model, loss_fn, x, y)
        return hand, native

    return make


def compiled_training_step(model, loss_fn, x, y) -> Callable[[], None]:
    """:func:`training_step` with forward and loss compiled whole (``torch.compile(fullgraph=True)``, so the
    backward is the compiled graph's); the SGD update stays eager. The first call compiles: its seconds are
    the returned step's ``compile_seconds``, and the timing after it leaves them out."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    objective = torch.compile(lambda x, y: loss_fn(model(x), y), fullgraph=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        objective(x, y).backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    step.compile_seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return step


def fused_loss_against_native():
    """The derivation network's training step through torchbp's fastest path, network and ½ SSE as one node
    (torchbp.fuse_loss), against native autograd."""

    def make():
        model, loss_fn, x, y = TRAINING_SETUPS["derivation"]()
        objective = torchbp.fuse_loss(model, torch.nn.MSELoss(reduction="sum"), scale=0.5)  # J = ½ Σ (y − ŷ)²
        optimizer = torch.optim.SGD(objective.parameters(), lr=1e-3)

        def hand():
            optimizer.zero_grad(set_to_none=True)
            objective(x, y).backward()
            optimizer.step()

        return hand, training_step(model, loss_fn, x, y)

    return make


def lockstep_against_two_steps(setup: str):
    """One LockstepTrainer step (checked, logging to TensorBoard) against a native training step plus a torchbp one:
    what checking and logging add to training the two models."""

    def make():
        model, loss_fn, x, y = TRAINING_SETUPS[setup]()
        log_dir = tempfile.mkdtemp(prefix="torchbp-bench-")
        atexit.register(shutil.rmtree, log_dir, ignore_errors=True)
        trainer = torchbp.LockstepTrainer(model, loss_fn, lr=1e-3, log_dir=torchbp.new_run_dir(log_dir, setup))
        hand = training_step(torchbp.convert(model), torchbp.convert(loss_fn), x, y)
        native = training_step(model, loss_fn, x, y)

        def both():
            hand()
            native()

        return (lambda: trainer.step(x, y)), both

    return make


def training_case(title: str, setup: str, variant: str, target: float, memory_target: float | None = 1.05) -> Case:
    return Case(
        f"training step, {title}" + (", fused" if variant == "fused" else ""),
        "torchbp.fuse" if variant == "fused" else "torchbp per-layer",
        "native autograd",
        steps_against_native(setup, variant),
        target,
        memory_target,
        (setup, variant),
    )


def floor_case(title: str, setup: str, target: float) -> Case:
    """The floor of a per-layer case in eager mode (:func:`with_a_node_per_layer`) against native, with the
    per-layer case's target: where the floor itself misses it, no hand-derived per-layer path can meet it."""
    return Case(
        f"floor of the per-layer training step, {title}",
        "native + a no-op Function per layer",
        "native autograd",
        steps_against_native(setup, "floor"),
        target,
    )


def compiled_case(title: str, setup: str, variant: str = "per-layer", target: float = 1.05) -> Case:
    return Case(
        f"compiled training step, {title}" + (", fused" if variant == "fused" else ""),
        "torch.compile of " + ("torchbp.fuse" if variant == "fused" else "torchbp per-layer"),
        "torch.compile of native",
        steps_against_native(setup, variant, compiled_training_step),
        target,
    )


def conv_weight_gradients_against_native(setup: str = "conv", compiled: bool = False):
    """The floor of a compiled convolution case: ∂J/∂W of the setup's convolutions as torchbp computes it
    (``weight_gradient_by_convolution``, which compiled torchbp runs as the operator
    ``torchbp::conv2d_weight_gradient`` on the compute-bound convolution; with ``compiled``, ``weight_gradient``
    itself through torch.compile, which on digits-cnn's small convolutions is the contraction over the
    windows), against native's backward-weights kernel (``aten.convolution_backward``) on the same tensors:
    what the weight gradient costs, apart from the rest of the step."""

    def make():
        model, _, x, _ = TRAINING_SETUPS[setup]()
        inputs: list[tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]] = []
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        hooks = [m.register_forward_hook(lambda m, i, o: inputs.append((m, i[0], o))) for m in convs]
        with torch.no_grad():
            model(x)
        for hook in hooks:
            hook.remove()
        generator = torch.Generator().manual_seed(3)
        layers = [(a_prev, torch.randn(z.shape, generator=generator), conv) for conv, a_prev, z in inputs]
        route = torch.compile(weight_gradient) if compiled else weight_gradient_by_convolution

        def hand():
            return [
                route(a_prev, delta, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
                for a_prev, delta, conv in layers
            ]

        def native():
            return [
                natives_weight_gradient(
                    a_prev, delta, conv.kernel_size, conv.stride, conv.padding, conv.dilation, weight=conv.weight
                )
                for a_prev, delta, conv in layers
            ]

        return hand, native

    return make


def natives_weight_gradient(a_prev, delta, kernel_size, stride, padding, dilation, groups=1, weight=None):
    """∂J/∂W by native's backward-weights kernel, in the signature of ``weight_gradient_by_convolution``;
    the kernel reads only the weight's shape (given ``weight``, its own; else an empty one of that shape)."""
    if weight is None:
        weight = a_prev.new_empty((delta.shape[1], a_prev.shape[1] // groups, *kernel_size))
    else:
        weight = weight.detach()
    mask = (False, True, False)
    return torch.ops.aten.convolution_backward(
        delta, a_prev, weight, None, stride, padding, dilation, False, (0, 0), groups, mask
    )[1]


def with_natives_weight_gradient(setup: str):
    """The floor of a per-layer case but for its convolutions' weight gradients: torchbp's step with native's
    backward-weights kernel in place of ``weight_gradient_by_convolution`` (swapped in for each step and back
    out after it), against native's step: what every other hand-derived part of the step costs."""

    def make():
        hand, native = steps_against_native(setup)()

        def hand_with_natives():
            ours = torchbp.layers.conv2d.weight_gradient_by_convolution
            torchbp.layers.conv2d.weight_gradient_by_convolution = natives_weight_gradient
            try:
                hand()
            finally:
                torchbp.layers.conv2d.weight_gradient_by_convolution = ours

        return hand_with_natives, native

    return make


def vmap_grad(native: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    """torch.func's per-sample gradients of ``native`` under summed cross-entropy: vmap(grad)."""
    params = {name: p.detach() for name, p in native.named_parameters()}

    def one_sample_loss(params, x_n, label_n):
        logits = torch.func.functional_call(native, params, (x_n[None],))
        return F.cross_entropy(logits, label_n[None], reduction="sum")

    vmapped = torch.func.vmap(torch.func.grad(one_sample_loss), in_dims=(None, 0, 0))
    return lambda: vmapped(params, x, labels)


def per_sample_of_a_network_against_torch_func(network: str):
    """A network's per-sample gradients into reused buffers, against torch.func's vmap(grad)."""

    def make():
        native, _, x, labels = TRAINING_SETUPS[network]()
        hand = torchbp.convert(native)
        loss_fn = torchbp.nn.CrossEntropyLoss(reduction="sum")
        buffers = per_sample_grads(hand, loss_fn, x, labels)
        return (lambda: per_sample_grads(hand, loss_fn, x, labels, out=buffers)), vmap_grad(native, x, labels)

    return make


def cnn_per_sample_floor():
    """The floor of digits-cnn's per-sample gradients, against torch.func's vmap(grad): native's forward and
    backward, the backward only as far as each layer's output (every δ, no weight gradient), then torchbp's
    per-sample rules on each layer's (a_prev, δ) into reused buffers. Per-sample gradients from a backward
    need at least that; torchbp's own pass adds its hand-derived backward and the recording."""

    def make():
        native, _, x, labels = digits_cnn_setup()
        rules = {layer.native: layer.per_sample for layer in LAYERS if layer.per_sample is not None}
        frozen = copy.deepcopy(native).requires_grad_(False)  # runs the pass; the rules read native's modules
        recorded = [(m, f) for m, f in zip(native.modules(), frozen.modules()) if type(m) in rules]
        buffers = per_sample_grads(torchbp.convert(native), torchbp.nn.CrossEntropyLoss(reduction="sum"), x, labels)
        names = {m: name for name, m in native.named_modules()}
        out = {m: {local: buffers[f"{names[m]}.{local}"] for local, _ in m.named_parameters()} for m, _ in recorded}
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _, f in recorded:
            f.register_forward_hook(lambda module, inputs, output: calls.append((inputs[0], output)))
        x_leaf = x.detach().requires_grad_()

        def floor():
            calls.clear()
            loss = F.cross_entropy(frozen(x_leaf), labels, reduction="sum")
            deltas = torch.autograd.grad(loss, [output for _, output in calls])
            for (m, _), (a_prev, _), delta in zip(recorded, calls, deltas):
                rules[type(m)].grads(m, a_prev.detach(), delta, out[m])
            return buffers

        return floor, vmap_grad(native, x, labels)

    return make


def norms_of_a_network_against_a_backward(network: str):
    """A network's per-sample gradient norms against one plain training backward."""

    def make():
        native, _, x, labels = TRAINING_SETUPS[network]()
        hand = torchbp.convert(native)
        hand_loss = torchbp.nn.CrossEntropyLoss()

        def backward():
            hand.zero_grad(set_to_none=True)
            hand_loss(hand(x), labels).backward()

        return (lambda: per_sample_grad_norms(hand, hand_loss, x, labels)), backward

    return make


RESNET_BLOCK = "a ResNet basic block with batch norm (16 channels, 16×16, batch 32)"
CASES = [
    Case(
        "per-sample grads, 3×256 MLP, batch 256",
        "torchbp.per_sample_grads",
        "torch.func vmap(grad)",
        per_sample_against_torch_func(256, 3, 256),
        0.5,
    ),
    Case(
        "per-sample grads, 2×512 MLP, batch 1024",
        "torchbp.per_sample_grads",
        "torch.func vmap(grad)",
        per_sample_against_torch_func(512, 2, 1024),
        0.5,
    ),
    Case(
        "per-sample grads into reused buffers, 3×256 MLP, batch 256",
        "torchbp.per_sample_grads(out=)",
        "torch.func vmap(grad)",
        per_sample_against_torch_func(256, 3, 256, reuse=True),
        0.5,
    ),
    Case(
        "per-sample grads into reused buffers, 2×512 MLP, batch 1024",
        "torchbp.per_sample_grads(out=)",
        "torch.func vmap(grad)",
        per_sample_against_torch_func(512, 2, 1024, reuse=True),
        0.5,
    ),
    Case(
        "per-sample norms, 3×256 MLP, batch 256",
        "torchbp.per_sample_grad_norms",
        "norms of formed grads",
        norms_against_formed_gradients(256, 3, 256),
        0.2,
    ),
    Case(
        "per-sample norms, 2×512 MLP, batch 1024",
        "torchbp.per_sample_grad_norms",
        "norms of formed grads",
        norms_against_formed_gradients(512, 2, 1024),
        0.2,
    ),
    Case(
        "training step after per-sample use, 3×256 MLP, batch 64",
        "model per-sample grads were taken from",
        "untouched twin",
        training_after_per_sample_use(256, 3, 64),
        1.05,
    ),
    Case(
        "lockstep step, derivation's 2-3-1 network, float64",
        "LockstepTrainer.step, logging on",
        "native step + torchbp step",
        lockstep_against_two_steps("derivation"),
        1.25,
    ),
    Case(
        "lockstep step, mid MLP (3×256, batch 64)",
        "LockstepTrainer.step, logging on",
        "native step + torchbp step",
        lockstep_against_two_steps("mid"),
        1.25,
    ),
    # The 2-3-1 network's targets guard against regression: the medians of the code before the layer table
    # (four full runs), where the input checks and the module API keep every path above native's time.
    training_case("derivation's 2-3-1 network, float64", "derivation", "per-layer", 1.44),
    training_case("derivation's 2-3-1 network, float64", "derivation", "fused", 1.29),
    Case(
        "training step, derivation's 2-3-1 network, float64, network and loss as one node",
        "torchbp.fuse_loss",
        "native autograd",
        fused_loss_against_native(),
        1.17,
    ),
    training_case("mid MLP (3×256, batch 64)", "mid", "per-layer", 1.15),
    training_case("mid MLP (3×256, batch 64)", "mid", "fused", 1.15),
    training_case("compute-bound MLP (3×1024, batch 512)", "compute-bound", "per-layer", 1.03),
    training_case("compute-bound MLP (3×1024, batch 512)", "compute-bound", "fused", 1.03),
    training_case("mid MLP with tanh (3×256, batch 64)", "mid-tanh", "per-layer", 1.15, None),
    training_case("mid MLP with ReLU (3×256, batch 64)", "mid-relu", "per-layer", 1.15, None),
    training_case("mid MLP with LayerNorm and tanh (3×256, batch 64)", "mid-layernorm", "per-layer", 1.15, None),
    training_case(
        "mid MLP with cross-entropy (3×256, 256 classes, batch 64)", "mid-cross-entropy", "per-layer", 1.15, None
    ),
    training_case("compute-bound Conv2d (16→32→16 channels, 32×32, batch 32)", "conv", "per-layer", 1.15, 1.3),
    training_case("digits-cnn's network, batch 64", "digits-cnn", "per-layer", 1.3, 1.3),
    training_case("gpt's network (2 blocks, width 64, context 32, batch 32)", "gpt", "per-layer", 1.3, 1.3),
    training_case(RESNET_BLOCK, "resnet-block", "per-layer", 1.3, 1.3),
    floor_case("mid MLP (3×256, batch 64)", "mid", 1.15),
    floor_case("mid MLP with tanh (3×256, batch 64)", "mid-tanh", 1.15),
    floor_case("mid MLP with ReLU (3×256, batch 64)", "mid-relu", 1.15),
    floor_case("mid MLP with LayerNorm and tanh (3×256, batch 64)", "mid-layernorm", 1.15),
    floor_case("mid MLP with cross-entropy (3×256, 256 classes, batch 64)", "mid-cross-entropy", 1.15),
    floor_case("compute-bound Conv2d (16→32→16 channels, 32×32, batch 32)", "conv", 1.15),
    floor_case("gpt's network (2 blocks, width 64, context 32, batch 32)", "gpt", 1.3),
    floor_case("digits-cnn's network, batch 64", "digits-cnn", 1.3),
    floor_case(RESNET_BLOCK, "resnet-block", 1.3),
    Case(
        f"floor of the per-layer training step but for the weight gradients, {RESNET_BLOCK}",
        "torchbp per-layer, ∂J/∂W by native's kernel",
        "native autograd",
        with_natives_weight_gradient("resnet-block"),
        1.3,
    ),
    Case(
        f"floor of the per-layer training step, {RESNET_BLOCK}: its two weight gradients",
        "torchbp's route (F.conv2d of transposed tensors)",
        "native's backward-weights kernel",
        conv_weight_gradients_against_native("resnet-block"),
        1.3,
    ),
    compiled_case("derivation's 2-3-1 network, float64", "derivation"),
    compiled_case("mid MLP (3×256, batch 64)", "mid"),
    compiled_case("mid MLP (3×256, batch 64)", "mid", "fused"),
    compiled_case("compute-bound MLP (3×1024, batch 512)", "compute-bound"),
    compiled_case("mid MLP with tanh (3×256, batch 64)", "mid-tanh"),
    compiled_case("mid MLP with ReLU (3×256, batch 64)", "mid-relu"),
    compiled_case("mid MLP with LayerNorm and tanh (3×256, batch 64)", "mid-layernorm"),
    compiled_case("mid MLP with cross-entropy (3×256, 256 classes, batch 64)", "mid-cross-entropy"),
    compiled_case("compute-bound Conv2d (16→32→16 channels, 32×32, batch 32)", "conv"),
    compiled_case("digits-cnn's network, batch 64", "digits-cnn"),
    compiled_case("gpt's network (2 blocks, width 64, context 32, batch 32)", "gpt"),
    compiled_case(RESNET_BLOCK, "resnet-block"),
    Case(
        "floor of the compiled training step, compute-bound Conv2d: its two weight gradients",
        "torchbp's route (F.conv2d of transposed tensors)",
        "native's backward-weights kernel",
        conv_weight_gradients_against_native(),
        1.05,
    ),
    Case(
        "floor of the compiled training step, digits-cnn's network: its two weight gradients",
        "compiled torchbp's ∂J/∂W (the contraction over the windows)",
        "native's backward-weights kernel",
        conv_weight_gradients_against_native("digits-cnn", compiled=True),
        1.05,
    ),
    Case(
        "per-sample grads into reused buffers, digits-cnn, batch 64",
        "torchbp.per_sample_grads(out=)",
        "torch.func vmap(grad)",
        per_sample_of_a_network_against_torch_func("digits-cnn"),
        0.5,
    ),
    Case(
        "floor of per-sample grads into reused buffers, digits-cnn, batch 64",
        "native's forward and backward to each layer's output, then torchbp's per-sample rules",
        "torch.func vmap(grad)",
        cnn_per_sample_floor(),
        0.5,
    ),
    Case(
        "per-sample norms, digits-cnn, batch 64",
        "torchbp.per_sample_grad_norms",
        "a plain backward",
        norms_of_a_network_against_a_backward("digits-cnn"),
        2.0,
    ),
    Case(
        "per-sample grads into reused buffers, gpt's network, batch 32",
        "torchbp.per_sample_grads(out=)",
        "torch.func vmap(grad)",
        per_sample_of_a_network_against_torch_func("gpt"),
        1.0,
    ),
    Case(
        "per-sample norms, gpt's network, batch 32",
        "torchbp.per_sample_grad_norms",
        "a plain backward",
        norms_of_a_network_against_a_backward("gpt"),
        2.0,
    ),
    # Per-sample gradients and norms of CNNs against the peers (experiments/bench/peers.py): at or below each.
    *[
        Case(
            f"per-sample {kind}, {network}, against {peer}",
            ours,
            PEERS[peer].names[kind],
            against(peer, kind, setup),
            1.0,
            requires=PEERS[peer].module,
        )
        for kind, ours in OURS.items()
        for network, setup in PEER_NETWORKS.items()
        for peer in PEERS
    ],
]
