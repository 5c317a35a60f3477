"""The worked examples of the derivation, on the seed experiment's network and on each later chapter's layer,
computed three ways.

NumPy (experiments/derivation/numpy_derivation.py and each chapter's numpy_way, the
formulas alone), torchbp (the hand-derived Functions) and native autograd must give
the same numbers; they are checked against one another every time they are computed.

- ``python -m experiments seed --explain`` prints the network's example,
  ``python -m experiments.derivation.explain`` every chapter's (``--chapter`` one);
- ``python -m experiments.derivation.explain --write docs/derivation.md`` refreshes the
  generated blocks of the document (numbers and code references);
- tests/test_derivation_doc.py fails when the document is stale.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import numpy as np
import torch

import torchbp
from experiments.derivation.chapters import CHAPTERS
from experiments.derivation.example import agree, agreement_table, matrix
from experiments.derivation.numpy_derivation import derive, gradient_descent_step
from experiments.lab.registry import Config
from experiments.seed import HalfSumSquaredError, network, samples

ROOT = Path(__file__).resolve().parents[2]  # the repository
LR = 0.5  # the seed experiment's learning rate


def torchbp_way(x, y, model) -> dict[str, np.ndarray]:
    hand = torchbp.convert(model)
    loss_fn = torchbp.convert(HalfSumSquaredError())
    with torchbp.PerSampleGradients(hand) as recorder:
        J = loss_fn(hand(x), y)
        J.backward()
    ((_, delta1),) = recorder.recorded(hand[0])
    ((a1, delta2),) = recorder.recorded(hand[2])
    with torch.no_grad():
        z1 = hand[0](x)
        z2 = hand[2](a1)
        y_hat = hand[3](z2)
    values = dict(
        z1=z1,
        a1=a1,
        z2=z2,
        y_hat=y_hat,
        J=J,
        delta2=delta2,
        delta1=delta1,
        dJ_dW2=hand[2].weight.grad,
        dJ_dW1=hand[0].weight.grad,
        per_sample_dJ_dW2=recorder.grads()["2.weight"],
    )
    return {k: v.detach().numpy() for k, v in values.items()}


def autograd_way(x, y, model) -> dict[str, np.ndarray]:
    native = torchbp.to_native(model)
    z1 = native[0](x)
    a1 = native[1](z1)
    z2 = native[2](a1)
    y_hat = native[3](z2)
    z1.retain_grad(), z2.retain_grad()
    J = 0.5 * torch.nn.functional.mse_loss(y_hat, y, reduction="sum")
    J.backward()
    params = {name: p.detach() for name, p in native.named_parameters()}

    def one_sample(params, x_n, y_n):
        out = torch.func.functional_call(native, params, (x_n,))
        return 0.5 * torch.nn.functional.mse_loss(out, y_n, reduction="sum")

    per_sample = torch.func.vmap(torch.func.grad(one_sample), in_dims=(None, 0, 0))(params, x, y)
    values = dict(
        z1=z1,
        a1=a1,
        z2=z2,
        y_hat=y_hat,
        J=J,
        delta2=z2.grad,
        delta1=z1.grad,
        dJ_dW2=native[2].weight.grad,
        dJ_dW1=native[0].weight.grad,
        per_sample_dJ_dW2=per_sample["2.weight"],
    )
    return {k: v.detach().numpy() for k, v in values.items()}


def three_ways(seed: int = 0) -> dict:
    """Every quantity of the worked example, NumPy, torchbp and autograd, checked to agree."""
    x, y = samples(seed, torch.float64, "cpu")
    model = network(Config(steps=1, lr=LR, batch_size=None, dtype="float64", seed=seed))
    W1, W2 = model[0].weight.detach().numpy(), model[2].weight.detach().numpy()
    ways = {
        "NumPy": derive(x.numpy(), y.numpy(), W1, W2),
        "torchbp": torchbp_way(x, y, model),
        "autograd": autograd_way(x, y, model),
    }
    differences = agree(ways)
    W1_next, W2_next = gradient_descent_step(W1, W2, ways["NumPy"]["dJ_dW1"], ways["NumPy"]["dJ_dW2"], LR)
    after = derive(x.numpy(), y.numpy(), W1_next, W2_next)
    return dict(
        x=x.numpy(),
        y=y.numpy(),
        W1=W1,
        W2=W2,
        values=ways["NumPy"],
        differences=differences,
        W1_next=W1_next,
        W2_next=W2_next,
        J_next=after["J"],
    )


def blocks(numbers: dict) -> dict[str, str]:
    """The document's generated blocks, by name."""
    v = numbers["values"]
    per_sample = v["per_sample_dJ_dW2"]
    labels = [*(f"sample {n + 1}:  δ2,{n + 1} a1,{n + 1}ᵀ =" for n in range(per_sample.shape[0])), "sum:", "∂J/∂W2:"]
    rows = [*per_sample[:, 0], per_sample.sum(0)[0], v["dJ_dW2"][0]]
    width = max(map(len, labels))  # the numbers of every line in the same columns
    return {
        "samples": "\n\n".join(
            [
                matrix("x", numbers["x"]),
                matrix("y", numbers["y"]),
                matrix("W1", numbers["W1"]),
                matrix("W2", numbers["W2"]),
            ]
        ),
        "forward": "\n\n".join(
            [
                matrix("z1 = x W1ᵀ", v["z1"]),
                matrix("a1 = σ(z1)", v["a1"]),
                matrix("z2 = a1 W2ᵀ", v["z2"]),
                matrix("ŷ = σ(z2)", v["y_hat"]),
                matrix("J = ½ Σ (y − ŷ)²", v["J"]),
            ]
        ),
        "backward": "\n\n".join(
            [
                matrix("δ2 = (ŷ − y) ⊙ ŷ(1 − ŷ)", v["delta2"]),
                matrix("∂J/∂W2 = δ2ᵀ a1", v["dJ_dW2"]),
                matrix("δ1 = (δ2 W2) ⊙ a1(1 − a1)", v["delta1"]),
                matrix("∂J/∂W1 = δ1ᵀ x", v["dJ_dW1"]),
            ]
        ),
        "per-sample": "\n".join(
            f"{label:>{width}}  " + "  ".join(f"{c:+.6f}" for c in row) for label, row in zip(labels, rows)
        ),
        "update": "\n\n".join(
            [
                matrix(f"W1 − {LR} ∂J/∂W1", numbers["W1_next"]),
                matrix(f"W2 − {LR} ∂J/∂W2", numbers["W2_next"]),
                matrix("J after the step", numbers["J_next"]),
            ]
        ),
        "three-ways": agreement_table(numbers["differences"]),
        "code": code_references(),
    }


# formula, file, text that is on the implementing line
NETWORK_CODE = [
    ("z = a_prev Wᵀ + b", "torchbp/layers/linear.py", "z = F.linear(input, weight, bias)"),
    ("a = σ(z)", "torchbp/layers/sigmoid.py", "return torch.sigmoid(input)"),
    ("J = ½ Σ (y − ŷ)²", "experiments/seed.py", "return 0.5 * self.sum_squared_error(y_hat, y)"),
    ("∂J/∂ŷ = ŷ − y: mse_loss's 2(ŷ − y), times the ½", "torchbp/layers/mse_loss.py", "def mse_loss_backward("),
    ("δ = ∂J/∂a ⊙ σ'(z), σ'(z) = a(1 − a)", "torchbp/layers/sigmoid.py", "return torch.rsub(a, 1), a"),
    ("∂J/∂W = δᵀ a_prev", "torchbp/layers/linear.py", "grad_W = delta_n.T @ _rows(a_prev)"),
    ("∂J/∂b = Σ_n δ_n", "torchbp/layers/linear.py", "grad_b = delta_n.sum(0)"),
    ("δ_prev = (δ W) ⊙ σ'(z_prev): δ W", "torchbp/layers/linear.py", "grad_a_prev = delta @ W"),
    (
        "the same, layer after layer, as one algorithm",
        "torchbp/speed/fused.py",
        "for backward, read, i, form, arguments, tensors, flags, arrives in chain.backwards:",
    ),
    (
        "per-sample δ_n a_prev,nᵀ",
        "torchbp/layers/linear.py",
        "return torch.mul(delta[:, :, None], a_prev[:, None, :], out=out)",
    ),
    (
        "W ← W − η ∂J/∂W (NumPy)",
        "experiments/derivation/numpy_derivation.py",
        "return W1 - lr * dJ_dW1, W2 - lr * dJ_dW2",
    ),
]
CODE = NETWORK_CODE + [row for chapter in CHAPTERS for row in chapter.CODE]


def chapter_name(chapter) -> str:
    return chapter.__name__.rsplit(".", 1)[1]


def code_references(markdown: bool = True, rows=CODE) -> str:
    """A table for the document, each place linked to the API reference's entry for the function or class
    that holds it; or plain path:line columns for a terminal."""
    places = []
    for formula, path, text in rows:
        lines = (ROOT / path).read_text().splitlines()
        (number,) = [i + 1 for i, line in enumerate(lines) if text in line]  # exactly one line holds it
        places.append((formula, path, number))
    if not markdown:
        width = max(len(formula) for formula, _, _ in places)
        return "\n".join(f"{formula:<{width}}  {path}:{number}" for formula, path, number in places)
    return "\n".join(
        ["| formula | implemented at |", "|---|---|"]
        + [f"| {formula} | [`{path}:{number}`]({api_anchor(path, number)}) |" for formula, path, number in places]
    )


API_PAGES = {
    "torchbp/layers/": "reference/layers.md",
    "torchbp/speed/": "reference/speed.md",
    "experiments/": "reference/experiments.md",
}


def api_anchor(path: str, line: int) -> str:
    """The API reference page and anchor of the innermost function or class whose body holds ``line``."""
    names, node = [], ast.parse((ROOT / path).read_text())
    while True:
        inner = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)) and child.lineno <= line <= child.end_lineno
        ]
        if not inner:
            break
        node = inner[0]
        names.append(node.name)
        if isinstance(node, ast.FunctionDef):  # a function's own nested definitions are not documented
            break
    page = next(page for prefix, page in API_PAGES.items() if path.startswith(prefix))
    return f"{page}#" + ".".join([path.removesuffix(".py").replace("/", "."), *names])


BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.DOTALL)


def render(document: str, seed: int = 0) -> str:
    """``document`` with every generated block filled from the code."""
    generated = blocks(three_ways(seed))
    for chapter in CHAPTERS:
        generated |= chapter.blocks(chapter.three_ways())

    def fill(match):
        body = generated[match["name"]]
        fence = "" if body.startswith("|") else "```text\n"  # tables are markdown, the rest plain text
        return f"{match[1]}{fence}{body}\n{'```' + chr(10) if fence else ''}{match[4]}"

    return BLOCK.sub(fill, document)


def for_terminal(generated: dict[str, str], titles: dict[str, str], differences: dict[str, float]) -> str:
    """Each block under its title, and the agreement table followed by the differences it stands for."""
    largest = "\n\nlargest differences from NumPy: " + ", ".join(f"{name} {d:.1e}" for name, d in differences.items())
    return "\n\n".join(
        f"== {titles[name]} ==\n\n{body}{largest if name.endswith('three-ways') else ''}"
        for name, body in generated.items()
    )


def worked_example(seed: int = 0) -> str:
    numbers = three_ways(seed)
    generated = blocks(numbers)
    generated["code"] = code_references(markdown=False, rows=NETWORK_CODE)
    titles = {
        "samples": "The five samples and the initial weights",
        "forward": "Forward pass",
        "backward": "Backward pass",
        "per-sample": "Each sample's contribution to ∂J/∂W2",
        "update": f"One gradient-descent step (η = {LR})",
        "three-ways": "NumPy, torchbp and autograd agree",
        "code": "Where each formula lives",
    }
    notation = (
        "The notation of docs/derivation.md: a batch holds its samples as rows, z = a_prev Wᵀ, and δ = ∂J/∂z;\n"
        "one sample's vectors (a1,n, δ2,n) are columns, so δ2,n a1,nᵀ is an outer product shaped like W2."
    )
    return notation + "\n\n" + for_terminal(generated, titles, numbers["differences"])


def chapter_example(chapter) -> str:
    numbers = chapter.three_ways()
    generated = chapter.blocks(numbers) | {"code": code_references(markdown=False, rows=chapter.CODE)}
    return for_terminal(generated, chapter.TITLES | {"code": "Where each formula lives"}, numbers["differences"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.derivation.explain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--write", metavar="DOCUMENT", help="refresh the generated blocks of DOCUMENT in place")
    parser.add_argument(
        "--chapter",
        choices=["network"] + [chapter_name(c) for c in CHAPTERS],
        help="print this chapter's worked example alone",
    )
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(render(path.read_text()))
        print(f"refreshed {path}")
        return 0
    examples = {"network": worked_example} | {chapter_name(c): lambda c=c: chapter_example(c) for c in CHAPTERS}
    chosen = [args.chapter] if args.chapter else list(examples)
    print("\n\n".join(f"==== {name} ====\n\n{examples[name]()}" for name in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
