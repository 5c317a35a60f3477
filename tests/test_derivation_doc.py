"""docs/derivation.md: its numbers and code references are the code's, and the three ways agree."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import torchbp
import torchbp.layers.adaptive_avg_pool2d
import torchbp.layers.attention
import torchbp.layers.avg_pool2d
import torchbp.layers.batch_norm
import torchbp.layers.conv2d
import torchbp.layers.cross_entropy
import torchbp.layers.embedding
import torchbp.layers.gelu
import torchbp.layers.layer_norm
import torchbp.layers.max_pool2d
import torchbp.layers.sigmoid
import torchbp.layers.softmax
from experiments.__main__ import main
from experiments.derivation import explain, notation
from experiments.derivation.chapters import CHAPTERS, conv2d, cross_entropy, layer_norm, pooling
from experiments.derivation.chapters import attention as attention_chapter
from experiments.derivation.chapters import batch_norm as batch_norm_chapter
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
        "cross-entropy-saturation",
        "cross-entropy-three-ways",
    },
    "layer_norm": {"layer-norm-forward", "layer-norm-backward", "layer-norm-three-ways"},
    "conv2d": {
        "conv2d-forward",
        "conv2d-backward",
        "conv2d-matrix",
        "conv2d-by-hand",
        "conv2d-strided",
        "conv2d-three-ways",
    },
    "softmax": {"softmax-example", "softmax-three-ways"},
    "attention": {"attention-forward", "attention-backward", "attention-three-ways"},
    "gelu": {"gelu-example", "gelu-three-ways"},
    "embedding": {"embedding-example", "embedding-three-ways"},
    "batch_norm": {
        "batch-norm-forward",
        "batch-norm-backward",
        "batch-norm-coupling",
        "batch-norm-eval",
        "batch-norm-cumulative",
        "batch-norm-three-ways",
    },
    "pooling": {
        "pooling-max",
        "pooling-overlap",
        "pooling-average",
        "pooling-padding",
        "pooling-adaptive",
        "pooling-three-ways",
    },
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
    assert abs(v["delta"][0]).max() < abs(v["delta"][1]).max() and round(v["delta"][0, target[0]], 2) == -0.17


def test_cross_entropys_delta_is_largest_where_squared_errors_vanishes():
    v = cross_entropy.three_ways()["values"]
    squared, cross = v["delta_squared_error"], v["delta_two_classes"]
    assert (squared < cross).all() and squared.argmax() < len(squared) - 1  # ŷ(1 − ŷ) shrinks it on both sides
    assert squared[-1] < 1e-3 and cross[-1] > 0.99  # confidently wrong: the one hardly moves, the other most


def test_the_layer_norm_chapters_words_hold_for_its_example():
    v = layer_norm.three_ways()["values"]
    assert abs(v["dJ_dx"].sum(1)).max() < 1e-15  # a shift of x changes nothing
    assert abs((v["x_tilde"] * v["dJ_dx"]).sum(1)).max() < 1e-5  # nor, up to ε, does a scale


def test_the_convolution_chapters_words_hold_for_its_example():
    v = conv2d.three_ways()["values"]
    spread = np.zeros_like(v["dJ_dx"])  # each δ_hw adds δ_hw W onto the window it came from
    for (h, w), delta_hw in np.ndenumerate(np.array(conv2d.DELTA)):
        spread[h : h + 2, w : w + 2] += delta_hw * np.array(conv2d.WEIGHT)
    assert abs(spread - v["dJ_dx"]).max() < 1e-15
    assert v["A"].shape == (9, 16) and (np.count_nonzero(v["A"], axis=1) == 4).all()  # a row per window
    assert [np.count_nonzero(v["A"][:, 4 * u + w]) for u, w in conv2d.BY_HAND] == [1, 4]  # a corner, a centre
    assert conv2d.STRIDED["stride"] == 2 and conv2d.STRIDED["padding"] == 1  # windows of x_pad that do not overlap:
    blocks = np.kron(np.array(conv2d.DELTA), np.ones((2, 2))) * np.tile(np.array(conv2d.WEIGHT), (3, 3))
    assert abs(blocks - v["dJ_dx_pad_strided"]).max() < 1e-15  # each δ_hw W on a 2×2 block of its own


def test_the_batch_norm_chapters_words_hold_for_its_example():
    v = batch_norm_chapter.three_ways()["values"]
    M = len(batch_norm_chapter.X)
    assert abs(v["dJ_dx"].sum(0)).max() < 1e-15  # a shift of a channel over the batch changes nothing
    assert abs((v["x_tilde"] * v["dJ_dx"]).sum(0)).max() < 1e-5  # nor, up to ε, does a scale
    assert abs(v["compact"] - v["dJ_dx"]).max() < 1e-15  # the compact form is the three paths' sum
    assert (v["g_first"][1:] == 0).all() and (abs(v["dJ_dx_first"]) > 1e-2).all()  # every sample gets a gradient
    assert (abs(v["running_mean"]) < 0.2).all() and (abs(v["running_var"] - 1) < 0.4).all()  # still mostly 0 and 1
    assert (np.abs(v["a_eval"]).max(0) > 1.5 * np.abs(v["a"]).max(0)).any()  # and eval mode by them hardly normalises
    x_next = np.array(batch_norm_chapter.X_NEXT)
    assert abs(v["cumulative_mean"] - (v["mu"] + x_next.mean(0)) / 2).max() < 1e-15  # m = 1/t: the plain average
    assert abs(v["cumulative_var"] - (v["var"] + x_next.var(0)) / 2 * M / (M - 1)).max() < 1e-14
    assert (v["mu"] != v["mu_next"]).all()  # a second batch that moves the mean


def test_the_document_keeps_its_symbols():
    assert notation.problems(DOCUMENT.read_text()) == []


# a violation of each kind, planted by a change of the document: (text, its replacement, what the report says)
PLANTED_NOTATION = {
    "σ² for batch norm's variance": ("sample k's x_k moves μ and var,", "sample k's x_k moves μ and σ²,", "## 17."),
    "LaTeX σ for layer norm's": ("\\mathrm{var}_n = \\frac1D", "\\sigma_n^2 = \\frac1D", "## 11."),
    "x̂ for the normalised input": ("(x̃_d holds x_d)", "(x̂_d holds x_d)", "a hat only y"),
    "LaTeX \\hat x": ("$$\\tilde x_n = (x_n", "$$\\hat x_n = (x_n", "'\\\\hat x'"),
    "ĝ for ∂J/∂x̃": ("Summed against ∂J/∂x̃_m = g_m γ", "Summed against ĝ_m = g_m γ", "## 17."),
    "q for cross-entropy's target": ("with α replaces y by", "with α replaces q by", "the target as q"),
    "attention's scale as s": ("S = Q Kᵀ/√E,   P", "S = Q Kᵀ · s (s = 1/√E),   P", "## 14."),
    "pooling's output as y": ("hands g = ∂J/∂a back", "hands δ = ∂J/∂y back", "## 18."),
    "the momentum as m": ("(1 − momentum) · `running_mean`", "(1 − m) · `running_mean`", "momentum"),
    "a symbol of the table no chapter uses": ("| η |", "| ω | a frequency |\n| η |", "ω"),
    "the table stated twice": ("## 1. The network", "## The symbols\n\n## 1. The network", "once"),
}  # fmt: skip


@pytest.mark.parametrize("planted", PLANTED_NOTATION)
def test_a_planted_notation_slip_is_reported(planted):
    text, replacement, reported = PLANTED_NOTATION[planted]
    document = DOCUMENT.read_text()
    assert document.count(text) == 1
    found = notation.problems(document.replace(text, replacement))
    assert len(found) == 1 and reported in found[0], found


def test_per_sample_gradients_refuse_batch_norm_in_training_mode_as_the_chapter_says():
    model = torchbp.convert(torch.nn.Sequential(torch.nn.BatchNorm1d(2, dtype=torch.float64)))
    x = torch.tensor(batch_norm_chapter.X, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="depends on every other sample"):
        with torchbp.PerSampleGradients(model):
            model(x).sum().backward()
    model.eval()
    with torchbp.PerSampleGradients(model) as recorder:
        model(x).sum().backward()
    assert recorder.grads()["0.weight"].shape == (4, 2)


def test_the_pooling_chapters_words_hold_for_its_example():
    numbers = pooling.three_ways()
    x, g, v = numbers["x"], numbers["g"], numbers["values"]
    assert x[1, 2] == x[1, 3] == v["a_max"][0, 1] and v["m_max"][0, 1] == 1 * 4 + 2  # the tie: the first, (1,2)
    assert v["m_max"][0, 0] != 0  # a window whose max is not its first element
    for name in ("max", "overlap", "avg", "pad_out"):  # every g_hw reaches x whole
        assert abs(v[f"dJ_dx_{name}"].sum() - g.sum()) < 1e-15
    assert (np.count_nonzero(v["dJ_dx_max"]) == 4) and np.count_nonzero(v["dJ_dx_overlap"]) == 2
    assert v["dJ_dx_overlap"][2, 0] == g[0, 0] + g[1, 0] and v["dJ_dx_overlap"][1, 2] == g[0, 1] + g[1, 1]
    assert (v["dJ_dx_avg"] == np.kron(g, np.ones((2, 2))) / 4).all()
    assert (v["M_pad_in"] == 9).all() and (v["M_pad_out"] == [[4, 6], [6, 9]]).all()
    assert abs(v["dJ_dx_pad_in"].sum() - (g * v["M_pad_out"] / 9).sum()) < 1e-15  # the padding keeps its share
    same = torch.tensor(x)[None, None].requires_grad_()
    torch.nn.functional.avg_pool2d(same, 2, 1).backward(torch.tensor(numbers["g_3"])[None, None])
    assert abs(same.grad[0, 0].numpy() - v["dJ_dx_adaptive"]).max() < 1e-15  # 4×4 to 3×3: kernel 2, stride 1
    whole = torch.tensor(x)[None, None].requires_grad_()
    torchbp.functional.adaptive_avg_pool2d(whole, 1).backward(torch.full((1, 1, 1, 1), 0.8, dtype=torch.float64))
    assert (whole.grad == 0.8 / 16).all()  # to 1×1: δ/(H·W) everywhere


def _without_the_term_through_mu(original):
    def backward(g, x, mean, rstd, weight, training, eps, need_x, *needs):
        grad_x, grad_weight, grad_bias = original(g, x, mean, rstd, weight, training, eps, need_x, *needs)
        if training and grad_x is not None:
            per_channel = torchbp.layers.batch_norm.per_channel
            mean_g = g.mean(torchbp.layers.batch_norm.positions(g))
            grad_x = grad_x + per_channel(rstd * weight * mean_g, g)  # −γ rstd mean_m g taken away again
        return grad_x, grad_weight, grad_bias

    return backward


def _normalized_by_the_unbiased_variance(original):
    def normalized(x, mean, rstd, training, eps):
        if training:
            M = x.numel() // x.shape[1]
            rstd = ((rstd**-2 - eps) * M / (M - 1) + eps).rsqrt()  # var M/(M − 1) for var
        return original(x, mean, rstd, training, eps)

    return normalized


def _max_to_each_windows_first_element(original):
    def backward(delta, m, input_shape, kernel_size, stride, padding, dilation):
        h, w = delta.shape[-2:]
        rows = torch.arange(h)[:, None] * stride[0] - padding[0]
        columns = torch.arange(w) * stride[1] - padding[1]
        first = (rows * input_shape[-1] + columns).expand_as(m)
        return original(delta, first, input_shape, kernel_size, stride, padding, dilation)

    return backward


def _without_the_term_through_rstd(original):
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
    "attention's ∂J/∂Q without its scale 1/√E": (
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
    "layer norm's term through rstd left out": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "layer_norm_backward",
        _without_the_term_through_rstd,
    ),
    "γ left out of ∂J/∂x̃ = g ⊙ γ": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "layer_norm_backward",
        lambda original: lambda g, x, mean, rstd, weight, *rest: original(g, x, mean, rstd, None, *rest),
    ),
    "x̃ without rstd, x − μ in its place": (
        layer_norm.three_ways,
        torchbp.layers.layer_norm,
        "normalized",
        lambda original: lambda *args: (lambda x_hat, rstd: (x_hat / rstd, rstd))(*original(*args)),
    ),
    "∂J/∂γ = Σ g, without x̃": (
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
    "batch norm's term through μ left out": (
        batch_norm_chapter.three_ways,
        torchbp.layers.batch_norm,
        "batch_norm_backward",
        _without_the_term_through_mu,
    ),
    "batch norm's x̃ by the unbiased variance: M − 1 for M": (
        batch_norm_chapter.three_ways,
        torchbp.layers.batch_norm,
        "normalized",
        _normalized_by_the_unbiased_variance,
    ),
    "eval mode's ∂J/∂x with the training mode's three terms": (
        batch_norm_chapter.three_ways,
        torchbp.layers.batch_norm,
        "batch_norm_backward",
        lambda original: (
            lambda g, x, mean, rstd, weight, training, *rest: original(g, x, mean, rstd, weight, True, *rest)
        ),
    ),
    "max pooling's g sent to each window's first element": (
        pooling.three_ways,
        torchbp.layers.max_pool2d,
        "max_pool2d_backward",
        _max_to_each_windows_first_element,
    ),
    "max pooling's g of overlapping windows overwritten, not added": (
        pooling.three_ways,
        torchbp.layers.max_pool2d,
        "max_pool2d_backward",
        lambda original: (
            lambda delta, m, input_shape, *windows: (
                delta.new_zeros((*input_shape[:-2], input_shape[-2] * input_shape[-1]))
                .scatter(-1, m.flatten(-2), delta.flatten(-2))
                .view(input_shape)
            )
        ),
    ),
    "average pooling's divisor ignoring count_include_pad": (
        pooling.three_ways,
        torchbp.layers.avg_pool2d,
        "window_counts",
        lambda original: (
            lambda out, size, k, s, p, count_include_pad, device: original(out, size, k, s, p, True, device)
        ),
    ),
    "average pooling's g spread undivided": (
        pooling.three_ways,
        torchbp.layers.avg_pool2d,
        "avg_pool2d_backward",
        lambda original: (
            lambda delta, input_size, k, s, p, count_include_pad, divisor_override: original(
                delta, input_size, k, s, p, count_include_pad, 1
            )
        ),
    ),
    "adaptive pooling's window ends rounded down: ⌊(h + 1)·H/h_out⌋": (
        pooling.three_ways,
        torchbp.layers.adaptive_avg_pool2d,
        "windows",
        lambda original: (
            lambda out, size, device: (lambda a, b: (a, (torch.arange(1, out + 1) * size) // out))(
                *original(out, size, device)
            )
        ),
    ),
}


@pytest.mark.parametrize("planted", PLANTED)
def test_a_wrong_hand_derived_backward_makes_the_three_ways_disagree(planted, monkeypatch):
    chapter_three_ways, module, name, wrong = PLANTED[planted]
    monkeypatch.setattr(module, name, wrong(getattr(module, name)))
    with pytest.raises(AssertionError, match="disagree"):
        chapter_three_ways()


def test_the_document_shows_every_figure_the_script_draws_and_no_other():
    from experiments.derivation.figures import FIGURES

    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", DOCUMENT.read_text())
    assert sorted(figures) == sorted(FIGURES)
    assert all((DOCUMENT.parent / figure).is_file() for figure in figures)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The folder of every figure, as python -m experiments.derivation.figures draws it now."""
    pytest.importorskip("matplotlib")
    from experiments.derivation.figures import main as figures_main

    out = tmp_path_factory.mktemp("figures")
    assert figures_main(["--out", str(out)]) == 0
    return out


def test_the_figure_script_draws_every_figure(drawn):
    from experiments.derivation.figures import FIGURES

    for name in FIGURES:
        assert (drawn / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_committed_figure_shows_the_numbers_the_script_draws_now(drawn):
    """Each PNG carries the numbers it shows as its Description; compared, not the pixels, which vary
    with the matplotlib version."""
    from PIL import Image

    from experiments.derivation.figures import FIGURES

    for name in FIGURES:
        committed, now = (Image.open(folder / name).text.get("Description") for folder in (DOCUMENT.parent, drawn))
        assert committed == now, f"docs/{name} is stale: run python -m experiments.derivation.figures"


def test_the_cross_entropy_figure_pulls_the_target_up_by_1_minus_p_t_and_the_others_down_by_p_c():
    from experiments.derivation.chapter_figures import cross_entropy_pulls

    shown, numbers = cross_entropy_pulls(), cross_entropy.three_ways()
    p, pull, target = shown["p"], shown["pull"], np.array(cross_entropy.TARGET)
    np.testing.assert_allclose(pull, -len(p) * numbers["values"]["delta"], atol=1e-12)  # q − p = −N δ
    at_target = np.eye(p.shape[1], dtype=bool)[target]
    np.testing.assert_allclose(pull[at_target], 1 - p[at_target], atol=1e-12)
    np.testing.assert_allclose(pull[~at_target], -p[~at_target], atol=1e-12)


def test_the_layer_norm_figure_splits_dJ_dx_tilde_into_two_parts_removed_and_one_orthogonal_to_both_kept():
    from experiments.derivation.chapter_figures import layer_norm_projection

    shown, numbers = layer_norm_projection(), layer_norm.three_ways()
    parts = shown["along_one"] + shown["along_x_tilde"] + shown["kept"]
    np.testing.assert_allclose(parts, shown["dJ_dx_tilde"], atol=1e-12)
    np.testing.assert_allclose(shown["kept"] * numbers["values"]["rstd"], numbers["values"]["dJ_dx"], atol=1e-12)
    np.testing.assert_allclose(np.ptp(shown["along_one"], axis=1), 0, atol=1e-12)  # a multiple of 1
    np.testing.assert_allclose(shown["kept"].sum(1), 0, atol=1e-12)  # ⟂ 1
    # ⟂ x̃ up to ε: |x̃|² = D var/(var + ε), not quite D
    np.testing.assert_allclose((shown["kept"] * shown["x_tilde"]).sum(1), 0, atol=1e-5)


def test_the_conv2d_figure_scatters_delta_into_dJ_dx_one_term_at_a_corner_four_in_the_centre():
    from experiments.derivation.chapter_figures import conv2d_by_hand, conv2d_scatter

    shown = conv2d_scatter()
    np.testing.assert_allclose(shown["scattered"], conv2d.three_ways()["values"]["dJ_dx"], atol=1e-12)
    assert shown["terms"].tolist() == [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]
    corner, centre = conv2d_by_hand(shown)
    assert corner.startswith("∂J/∂x[0,0] = δ[0,0] W[0,0]") and corner.endswith("(1 term)")
    assert centre.startswith("∂J/∂x[1,1] = ") and centre.count(" W[") == 4 and centre.endswith("(4 terms)")


def test_the_seed_loss_figure_starts_at_chapter_3s_J_then_chapter_8s_J_after_the_step_and_both_curves_coincide():
    from experiments.derivation.figures import seed_losses

    losses, numbers = seed_losses(), three_ways()
    np.testing.assert_allclose(losses["hand"][:2], [numbers["values"]["J"], numbers["J_next"]], atol=1e-12)
    np.testing.assert_array_equal(losses["hand"], losses["autograd"])


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
