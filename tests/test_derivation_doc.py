"""docs/derivation.md: its numbers and code references are the code's, and the three ways agree."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import torchbp.layers.attention
import torchbp.layers.conv2d
import torchbp.layers.cross_entropy
import torchbp.layers.embedding
import torchbp.layers.gelu
import torchbp.layers.layer_norm
import torchbp.layers.sigmoid
import torchbp.layers.softmax
from experiments.__main__ import main
from experiments.derivation import explain
from experiments.derivation.chapters import CHAPTERS, conv2d, cross_entropy, layer_norm
from experiments.derivation.chapters import attention as attention_chapter
from experiments.derivation.chapters import embedding as embedding_chapter
from experiments.derivation.chapters import gelu as gelu_chapter
from experiments.derivation.chapters import softmax as softmax_chapter
from experiments.derivation.explain import BLOCK, render, three_ways

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "derivation.md"


def test_the_document_is_what_the_code_computes_now():
    document = DOCUMENT.read_text()
    assert render(document) == document, (
        "docs/derivation.md is stale: run python -m experiments.derivation.explain --write docs/derivation.md"
    )


def test_a_changed_number_in_the_document_is_noticed():
    document = DOCUMENT.read_text()
    changed = document.replace("J = ½ Σ (y − ŷ)² = 0.", "J = ½ Σ (y − ŷ)² = 1.", 1)
    assert changed != document and render(changed) != changed


NETWORK_BLOCKS = {"samples", "forward", "backward", "per-sample", "update", "three-ways", "code"}
CHAPTER_BLOCKS = {
    "cross_entropy": {
        "cross-entropy-example",
        "cross-entropy-stability",
        "cross-entropy-variants",
        "cross-entropy-three-ways",
    },
    "layer_norm": {"layer-norm-forward", "layer-norm-backward", "layer-norm-three-ways"},
    "conv2d": {"conv2d-forward", "conv2d-backward", "conv2d-three-ways"},
    "softmax": {"softmax-example", "softmax-three-ways"},
    "attention": {"attention-forward", "attention-backward", "attention-three-ways"},
    "gelu": {"gelu-example", "gelu-three-ways"},
    "embedding": {"embedding-example", "embedding-three-ways"},
}


def test_every_generated_block_is_filled():
    document = DOCUMENT.read_text()
    names = re.findall(r"<!-- generated: ([\w-]+) -->\n(?!<!-- end)", document)
    assert sorted(names) == sorted(NETWORK_BLOCKS.union(*CHAPTER_BLOCKS.values()))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=explain.chapter_name)
def test_each_chapter_renders_the_blocks_the_document_holds(chapter):
    assert set(chapter.blocks(chapter.three_ways())) == CHAPTER_BLOCKS[explain.chapter_name(chapter)]


@pytest.mark.parametrize("name", [match["name"] for match in BLOCK.finditer(DOCUMENT.read_text())])
def test_a_changed_digit_in_any_generated_block_is_noticed(name):
    document = DOCUMENT.read_text()
    block = next(match for match in BLOCK.finditer(document) if match["name"] == name)
    body = block["body"]
    digit = re.search(r"\d", body)
    changed_body = body[: digit.start()] + str((int(digit[0]) + 1) % 10) + body[digit.end() :]
    changed = document[: block.start("body")] + changed_body + document[block.end("body") :]
    assert render(changed) == document


def test_numpy_torchbp_and_autograd_agree():
    numbers = three_ways()
    assert all(difference <= 1e-12 for difference in numbers["differences"].values())
    per_sample = numbers["values"]["per_sample_dJ_dW2"]
    assert per_sample.shape == (5, 1, 3)
    assert abs(per_sample.sum(0) - numbers["values"]["dJ_dW2"]).max() < 1e-15


@pytest.mark.parametrize("chapter", CHAPTERS, ids=explain.chapter_name)
def test_each_chapters_numpy_torchbp_and_autograd_agree(chapter):
    differences = chapter.three_ways()["differences"]
    assert differences and all(difference <= 1e-12 for difference in differences.values())


def test_the_cross_entropy_chapters_words_hold_for_its_example():
    v = cross_entropy.three_ways()["values"]
    target = cross_entropy.TARGET
    assert v["p"][0].argmax() == target[0] and v["p"][1].argmin() == target[1]  # sample 1 right, sample 2 wrong
    assert v["delta"][1, target[1]] < 0 and (np.delete(v["delta"][1], target[1]) > 0).all()
    assert abs(v["delta"].sum(1)).max() < 1e-15  # each row of δ sums to zero
    assert np.isnan(v["naive_p_shifted"]).all() and np.isfinite(v["delta_shifted"]).all()
    assert (v["delta_ignored"][1] == 0).all()


def test_the_layer_norm_chapters_words_hold_for_its_example():
    v = layer_norm.three_ways()["values"]
    assert abs(v["dJ_dx"].sum(1)).max() < 1e-15  # a shift of x changes nothing
    assert abs((v["x_hat"] * v["dJ_dx"]).sum(1)).max() < 1e-5  # nor, up to ε, does a scale


def test_the_convolution_chapters_words_hold_for_its_example():
    v = conv2d.three_ways()["values"]
    spread = np.zeros_like(v["dJ_dx"])  # each δ_hw adds δ_hw W onto the window it came from
    for (h, w), delta_hw in np.ndenumerate(np.array(conv2d.DELTA)):
        spread[h : h + 2, w : w + 2] += delta_hw * np.array(conv2d.WEIGHT)
    assert abs(spread - v["dJ_dx"]).max() < 1e-15


def _without_the_term_through_sigma(original):
    def backward(g, x, mean, rstd, weight, normalized_ndim, eps, *needs):
        grad_x, grad_weight, grad_bias = original(g, x, mean, rstd, weight, normalized_ndim, eps, *needs)
        x_hat, rstd = torchbp.layers.layer_norm.normalize(x, normalized_ndim, eps)
        return grad_x + rstd * x_hat * (g * weight * x_hat).mean(-1, keepdim=True), grad_weight, grad_bias

    return backward


def tanh_gelu_term_of_2_kappa(z):
    """½ z (1 − tanh² u) √(2/π) · 2κ z²: what du/dz loses when d(κ z³)/dz is taken as κ z²."""
    tanh_u = torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z**3))
    return 0.5 * z * (1 - tanh_u**2) * (2 / torch.pi) ** 0.5 * 2 * 0.044715 * z**2


# the chapter, where the formula lives, its name there, and the wrong formula made from the right one
PLANTED = {
    "σ' 0.1 % too large": (
        three_ways,
        torchbp.layers.sigmoid.SigmoidFunction,
        "derivative",
        lambda original: lambda a: (original(a)[0] * 1.001, original(a)[1]),
    ),
    "softmax's Jacobian left out: ∂J/∂z = ∂J/∂log p": (
        cross_entropy.three_ways,
        torchbp.layers.cross_entropy,
        "through_log_softmax",
        lambda original: lambda u, log_p, in_place: u,
    ),
    "softmax's Σ g ⊙ y left out: ∂J/∂z = y ⊙ g": (
        softmax_chapter.three_ways,
        torchbp.layers.softmax,
        "softmax_backward",
        lambda original: lambda g, y, dim: g * y,
    ),
    "attention's dS without the softmax's Σ: ∂J/∂S = P ⊙ ∂J/∂P": (
        attention_chapter.three_ways,
        torchbp.layers.attention,
        "softmax_backward",
        lambda original: lambda g, y, dim: g * y,
    ),
    "attention's ∂J/∂Q without its scale s": (
        attention_chapter.three_ways,
        torchbp.layers.attention.ScaledDotProductAttentionFunction,
        "backward",
        lambda original: staticmethod(
            lambda ctx, *grads: (lambda q, *rest: (q / ctx.scale, *rest))(*original(ctx, *grads))
        ),
    ),
    "GELU's z φ(z) left out: a'(z) = Φ(z)": (
        gelu_chapter.three_ways,
        torchbp.layers.gelu.GELUFunction,
        "derivative",
        lambda original: staticmethod(lambda z: 0.5 * (1 + torch.erf(z / 2**0.5))),
    ),
    "tanh GELU's du/dz without the chain rule on z³: √(2/π) (1 + κ z²)": (
        gelu_chapter.three_ways,
        torchbp.layers.gelu.GELUTanhFunction,
        "derivative",
        lambda original: staticmethod(lambda z: original(z) - tanh_gelu_term_of_2_kappa(z)),
    ),
    "an embedding that overwrites a repeated row instead of adding": (
        embedding_chapter.three_ways,
        torchbp.layers.embedding,
        "embedding_backward",
        lambda original: (
            lambda g, indices, num_weights, padding_idx, scale: torch.zeros(
                num_weights, g.shape[-1], dtype=g.dtype
            ).index_put_((indices.reshape(-1),), g.reshape(-1, g.shape[-1]) * (indices.reshape(-1, 1) != padding_idx))
        ),
    ),
    "the mean's 1/N left out": (
        cross_entropy.three_ways,
        torchbp.layers.cross_entropy,
        "cross_entropy_backward",
        lambda original: (
            lambda g, g_log_p, log_p, target, probabilities, reduction, *rest: original(
                g, g_log_p, log_p, target, probabilities, "sum" if reduction == "mean" else reduction, *rest
            )
        ),
    ),
    "label smoothing left out of the backward's q": (
        cross_entropy.three_ways,
        torchbp.layers.cross_entropy,
        "index_distribution_times",
        lambda original: (
            lambda c, target, log_p, ignore_index, label_smoothing, *rest: original(
                c, target, log_p, ignore_index, 0.0, *rest
            )
        ),
    ),
    "layer norm's term through σ left out": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "layer_norm_backward",
        _without_the_term_through_sigma,
    ),
    "γ left out of ĝ": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "layer_norm_backward",
        lambda original: lambda g, x, mean, rstd, weight, *rest: original(g, x, mean, rstd, None, *rest),
    ),
    "x̂ without rstd, x − μ in its place": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "normalized",
        lambda original: lambda *args: (lambda x_hat, rstd: (x_hat / rstd, rstd))(*original(*args)),
    ),
    "∂J/∂γ = Σ g, without x̂": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "layer_norm_backward",
        lambda original: lambda *args: (lambda gx, gw, gb: (gx, gb, gb))(*original(*args)),
    ),
    "∂J/∂x with the kernel not rotated: δ correlated with W": (
        conv2d.three_ways,
        torchbp.layers.conv2d,
        "input_gradient",
        lambda original: lambda delta, W, *rest: original(delta, W.flip((2, 3)), *rest),
    ),
    "∂J/∂W with i and j swapped": (
        conv2d.three_ways,
        torchbp.layers.conv2d,
        "weight_gradient",
        lambda original: lambda *args: original(*args).transpose(2, 3),
    ),
    "∂J/∂b the mean of δ, not its sum": (
        conv2d.three_ways,
        torchbp.layers.conv2d,
        "conv2d_backward",
        lambda original: (
            lambda delta, *rest: (lambda gx, gW, gb: (gx, gW, gb / delta[0, 0].numel()))(*original(delta, *rest))
        ),
    ),
}


@pytest.mark.parametrize("planted", PLANTED)
def test_a_wrong_hand_derived_backward_makes_the_three_ways_disagree(planted, monkeypatch):
    chapter_three_ways, module, name, wrong = PLANTED[planted]
    monkeypatch.setattr(module, name, wrong(getattr(module, name)))
    with pytest.raises(AssertionError, match="disagree"):
        chapter_three_ways()


def test_every_figure_the_document_shows_exists():
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", DOCUMENT.read_text())
    assert len(figures) == 3
    assert all((DOCUMENT.parent / figure).is_file() for figure in figures)


def test_the_readme_links_the_document():
    assert "docs/derivation.md" in (ROOT / "README.md").read_text()


def test_seed_explain_prints_the_worked_example(capsys):
    assert main(["seed", "--explain"]) == 0
    printed = capsys.readouterr().out
    for heading in ("Forward pass", "Backward pass", "Each sample's contribution", "agree"):
        assert heading in printed
    assert "δ2 = (ŷ − y)" in printed


@pytest.mark.parametrize("chapter", [explain.chapter_name(chapter) for chapter in CHAPTERS])
def test_explain_prints_a_chapters_worked_example(chapter, capsys):
    assert explain.main(["--chapter", chapter]) == 0
    printed = capsys.readouterr().out
    assert "agree" in printed and "largest differences from NumPy" in printed and "Where each formula lives" in printed


@pytest.mark.parametrize("argv", [["xor", "--explain"], ["--explain"]], ids=["another experiment", "no experiment"])
def test_explain_goes_with_seed_alone(argv, capsys):
    assert main(argv) == 2
    assert "--explain" in capsys.readouterr().err


def test_the_figure_script_draws_every_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from experiments.derivation.figures import FIGURES
    from experiments.derivation.figures import main as figures_main

    assert figures_main(["--out", str(tmp_path)]) == 0
    for name in FIGURES:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
