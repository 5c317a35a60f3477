"""Embedding: the scatter-add of the upstream rows into the rows looked up, against native autograd.

Cases are data: OPTIONS (padding_idx, scale_grad_by_freq) × INDEX_SHAPES, each with repeated indices.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.gradcheck import GradcheckError

import torchbp
import torchbp.functional as TF
import torchbp.layers.embedding as embedding
from torchbp.check import check_function, check_model
from torchbp.per_sample import per_sample_grad_norms, per_sample_grads

V, D = 7, 3
OPTIONS = {
    "plain": dict(padding_idx=None, scale_grad_by_freq=False),
    "padding_idx 2": dict(padding_idx=2, scale_grad_by_freq=False),
    "padding_idx -1": dict(padding_idx=-1, scale_grad_by_freq=False),
    "scale_grad_by_freq": dict(padding_idx=None, scale_grad_by_freq=True),
    "both": dict(padding_idx=2, scale_grad_by_freq=True),
}
INDEX_SHAPES = [(5,), (4, 6), (2, 3, 4), (0, 3), ()]


def indices(*shape, seed=0, dtype=torch.int64):
    """Indices in [0, V) with repeats (and the padding row 2 and the last row among them)."""
    i = torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))
    i.view(-1)[:2] = torch.tensor([2, V - 1])[: i.numel()]
    return i.to(dtype)


def weight(dtype=torch.float64):
    return torch.randn(V, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", INDEX_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS)
def test_matches_native(options, shape, dtype):
    i, kw = indices(*shape), OPTIONS[options]
    check_function(lambda w: TF.embedding(i, w, **kw), lambda w: F.embedding(i, w, **kw), weight(dtype)).assert_ok()


@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=3), seed=st.integers(0, 1000))
def test_matches_native_for_any_index_shape(shape, seed):
    i = indices(*shape, seed=seed)
    report = check_function(lambda w: TF.embedding(i, w, 2), lambda w: F.embedding(i, w, 2), weight())
    assert report.ok, str(report)


def test_int32_indices_work_as_natively():
    i = indices(4, 6, dtype=torch.int32)
    check_function(lambda w: TF.embedding(i, w), lambda w: F.embedding(i, w), weight()).assert_ok()


def test_repeated_indices_add_up_and_the_padding_row_gets_nothing():
    i = torch.tensor([[1, 1, 2], [1, 3, 2]])
    w = weight().requires_grad_()
    TF.embedding(i, w, padding_idx=2).backward(torch.ones(2, 3, D, dtype=torch.float64))
    expected = torch.zeros(V, D, dtype=torch.float64)
    expected[1], expected[3] = 3.0, 1.0  # row 1 looked up three times, row 2 the padding row
    assert torch.equal(w.grad, expected)


@pytest.mark.parametrize("options", OPTIONS)
def test_torchbp_verify_passes(options):
    """The batch is along the indices (the weight is every sample's). padding_idx and scale_grad_by_freq are
    conventions, not derivatives: the padding row's true derivative is not 0, nor is a row's divided by its
    count, so finite differences disagree with native's backward as with torchbp's, and gradcheck is skipped
    for them; the comparison with native holds them."""
    kw = OPTIONS[options]
    skip = ("gradcheck",) if kw != OPTIONS["plain"] else ()
    fn = lambda i, w: TF.embedding(i, w, **kw)  # noqa: E731
    reference = lambda i, w: F.embedding(i, w, **kw)  # noqa: E731
    report = torchbp.verify(
        fn, reference, indices(4, 6), weight(), batch_dims=(0, None), skip=skip, compile_backend="aot_eager"
    )
    report.assert_ok()


PLANTED = {
    "repeats written over, not added": lambda g, i, n, pad, scale: torch.zeros(
        n, g.shape[-1], dtype=g.dtype
    ).index_copy(0, i.reshape(-1), g.reshape(-1, g.shape[-1])),
    "the padding row not left out": lambda g, i, n, pad, scale: ORIGINAL(g, i, n, None, scale),
    "not divided by the frequency": lambda g, i, n, pad, scale: ORIGINAL(g, i, n, pad, False),
}
ORIGINAL = embedding.embedding_backward


@pytest.mark.parametrize("bug", PLANTED)
def test_a_planted_wrong_formula_is_caught(bug, monkeypatch):
    monkeypatch.setattr(embedding, "embedding_backward", PLANTED[bug])
    i, kw = indices(4, 6), OPTIONS["both"]
    report = check_function(lambda w: TF.embedding(i, w, **kw), lambda w: F.embedding(i, w, **kw), weight())
    assert [row.name for row in report.mismatches] == ["inputs[0].grad"], report
    if bug == "repeats written over, not added":  # the others break a convention, not the derivative
        with pytest.raises(GradcheckError):
            torch.autograd.gradcheck(lambda w: TF.embedding(i, w), weight().requires_grad_())


BAD_INPUT = {
    "float indices": (lambda: TF.embedding(torch.tensor([1.0]), weight()), torchbp.DTypeError, "int64 or int32"),
    "index V": (lambda: TF.embedding(torch.tensor([[0, V]]), weight()), torchbp.IndexRangeError, f"[0, {V})"),
    "negative index": (lambda: TF.embedding(torch.tensor([-1]), weight()), torchbp.IndexRangeError, "got -1"),
    "padding_idx out of range": (
        lambda: TF.embedding(torch.tensor([1]), weight(), padding_idx=V),
        torchbp.IndexRangeError,
        "padding_idx",
    ),
    "a 1-D weight": (lambda: TF.embedding(torch.tensor([1]), weight()[0]), torchbp.ShapeError, "(3,)"),
    "an integer weight": (
        lambda: TF.embedding(torch.tensor([1]), torch.ones(V, D, dtype=torch.int64)),
        torchbp.DTypeError,
        "embedding",
    ),
    "max_norm": (lambda: TF.embedding(torch.tensor([1]), weight(), max_norm=1.0), NotImplementedError, "max_norm"),
    "sparse": (lambda: TF.embedding(torch.tensor([1]), weight(), sparse=True), NotImplementedError, "sparse"),
    "max_norm at construction": (lambda: torchbp.nn.Embedding(V, D, max_norm=1.0), NotImplementedError, "max_norm"),
    "sparse at construction": (lambda: torchbp.nn.Embedding(V, D, sparse=True), NotImplementedError, "sparse"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_before_any_arithmetic(case):
    call, error, text = BAD_INPUT[case]
    with pytest.raises(error, match=text.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        call()


def test_an_index_out_of_range_names_both_shapes():
    with pytest.raises(torchbp.IndexRangeError, match=r"weight \(7, 3\), got 7 in the input of shape \(1, 2\)"):
        TF.embedding(torch.tensor([[0, V]]), weight())


def test_the_module_is_a_drop_in_and_convert_leaves_unsupported_ones_native():
    torch.manual_seed(0)
    native = torch.nn.Embedding(V, D, padding_idx=2)
    torch.manual_seed(0)
    ours = torchbp.nn.Embedding(V, D, padding_idx=2)
    assert torch.equal(ours.weight, native.weight) and torch.equal(ours.weight[2], torch.zeros(D))
    assert ours.state_dict().keys() == native.state_dict().keys()
    assert type(torchbp.convert(native)) is torchbp.nn.Embedding
    assert type(torchbp.nn.Embedding.from_pretrained(weight())) is torchbp.nn.Embedding
    for unsupported in (torch.nn.Embedding(V, D, max_norm=1.0), torch.nn.Embedding(V, D, sparse=True)):
        assert type(torchbp.convert(unsupported)) is torch.nn.Embedding
    model = torch.nn.Sequential(torch.nn.Embedding(V, D, padding_idx=0), torch.nn.Flatten(), torch.nn.Linear(6 * D, 2))
    report = check_model(model.double(), torch.nn.MSELoss(), indices(4, 6), torch.randn(4, 2, dtype=torch.float64))
    report.assert_ok()
    assert "0 Embedding" in report.layers


def token_model(**options):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(V, D, **options), torch.nn.Linear(D, 2)).double()


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_per_sample_gradients_scatter_each_samples_own_rows(padding_idx):
    """Against a loop of one-sample backward passes, and their norms without the (N, V, D) blocks."""
    model, x, y = token_model(padding_idx=padding_idx), indices(4, 6), torch.randn(4, 6, 2, dtype=torch.float64)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    ours = per_sample_grads(model, loss_fn, x, y)
    for n in range(4):
        model.zero_grad()
        loss_fn(model(x[n : n + 1]), y[n : n + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(ours[name][n], p.grad)
    expected = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in ours.values()))
    torch.testing.assert_close(per_sample_grad_norms(model, loss_fn, x, y), expected)


def test_per_sample_norms_of_the_embedding_alone_match_the_formed_blocks():
    delta, i = torch.randn(5, 8, D, dtype=torch.float64), indices(5, 8)
    for padding_idx in (None, 2):
        blocks = embedding.per_sample_weight_grads(delta, i, V, padding_idx, None)
        torch.testing.assert_close(
            embedding.per_sample_weight_grad_norms_squared(delta, i, padding_idx), blocks.square().sum((1, 2))
        )


def test_per_sample_gradients_refuse_scale_grad_by_freq_and_say_why():
    model = token_model(scale_grad_by_freq=True)
    with pytest.raises(NotImplementedError, match="couples the samples"):
        per_sample_grads(model, torch.nn.MSELoss(), indices(4, 6), torch.randn(4, 6, 2, dtype=torch.float64))
