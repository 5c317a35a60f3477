"""Scaled dot-product attention: dQ, dK, dV (and an additive mask's gradient) through the softmax, against native.

Cases are data: CASES below, each a set of shapes and options run in float32 and float64.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

import torchbp
import torchbp.layers.attention as attention
from torchbp.check import check_function
from torchbp.functional import scaled_dot_product_attention as sdpa

f64 = torch.float64


def tensors(*shapes, dtype=f64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator, dtype=f64).to(dtype) for shape in shapes)


def causal_like(L, S):
    return torch.ones(L, S, dtype=torch.bool).tril()


def a_row_fully_masked(L, S):
    mask = torch.rand(L, S, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[1] = False  # every key of query 1 masked: its output is 0, as native's
    return mask


# name: (query, key, value shapes, options)
CASES = {
    "heads": ((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 3), {}),
    "no heads (N, L, E)": ((3, 5, 8), (3, 6, 8), (3, 6, 8), {}),
    "one sequence (L, E)": ((5, 8), (6, 8), (6, 2), {}),
    "causal": ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4), {"is_causal": True}),
    "causal, L < S": ((2, 3, 4, 4), (2, 3, 6, 4), (2, 3, 6, 4), {"is_causal": True}),
    "scale": ((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 3), {"scale": 0.3}),
    "boolean mask, broadcast": ((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 3), {"attn_mask": causal_like(5, 6)}),
    "a query with every key masked": (
        (2, 4, 5, 8),
        (2, 4, 6, 8),
        (2, 4, 6, 3),
        {"attn_mask": a_row_fully_masked(5, 6)},
    ),
    "grouped query heads": ((2, 6, 5, 8), (2, 2, 6, 8), (2, 2, 6, 3), {"enable_gqa": True}),
    "empty batch": ((0, 4, 5, 8), (0, 4, 6, 8), (0, 4, 6, 3), {}),
}


@pytest.mark.parametrize("dtype", [torch.float32, f64], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_matches_native(case, dtype):
    *shapes, options = CASES[case]
    report = check_function(
        lambda q, k, v: sdpa(q, k, v, **options),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **options),
        *tensors(*shapes, dtype=dtype),
    )
    report.assert_ok()


def test_an_additive_mask_gets_its_gradient_summed_over_its_broadcast_dimensions():
    q, k, v, mask = tensors((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 3), (4, 1, 6))
    report = check_function(
        lambda q, k, v, m: sdpa(q, k, v, attn_mask=m),
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        q,
        k,
        v,
        mask,
    )
    report.assert_ok()
    assert "inputs[3].grad" in [row.name for row in report.rows]


def test_a_fully_masked_query_gives_zeros_and_gets_zero_gradients():
    q, k, v = (t.requires_grad_() for t in tensors((5, 8), (6, 8), (6, 3)))
    out = sdpa(q, k, v, attn_mask=a_row_fully_masked(5, 6))
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros(3, dtype=f64)) and torch.equal(q.grad[1], torch.zeros(8, dtype=f64))


@pytest.mark.parametrize("case", ["heads", "causal", "grouped query heads", "a query with every key masked"])
def test_torchbp_verify_passes(case):
    *shapes, options = CASES[case]
    fn = lambda q, k, v: sdpa(q, k, v, **options)  # noqa: E731
    reference = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **options)  # noqa: E731
    report = torchbp.verify(fn, reference, *tensors(*shapes), batch_dims=(0, 0, 0), compile_backend="aot_eager")
    report.assert_ok()


PLANTED = {
    "the softmax's Jacobian left out: ∂J/∂S = ∂J/∂P": ("softmax_backward", lambda g, y, dim: g),
    "the groups' gradients not summed (the first kept)": (
        "summed_over_groups",
        lambda grad, kv_heads: grad if grad.shape[-3] == kv_heads else grad[..., ::3, :, :],
    ),
}


@pytest.mark.parametrize("bug", PLANTED)
def test_a_planted_wrong_formula_is_caught(bug, monkeypatch):
    name, wrong = PLANTED[bug]
    monkeypatch.setattr(attention, name, wrong)
    *shapes, options = CASES["grouped query heads"]
    fn = lambda q, k, v: sdpa(q, k, v, **options)  # noqa: E731
    report = check_function(fn, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **options), *tensors(*shapes))
    assert not report.ok and report.mismatches
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in tensors(*shapes)))


BAD_INPUT = {
    "E of key unlike query's": (
        ((2, 5, 8), (2, 6, 7), (2, 6, 3)),
        {},
        torchbp.ShapeError,
        r"\(2, 5, 8\), key \(2, 6, 7\)",
    ),
    "S of value unlike key's": (((2, 5, 8), (2, 6, 8), (2, 4, 3)), {}, torchbp.ShapeError, r"value \(2, 4, 3\)"),
    "heads not a multiple": (
        ((2, 3, 5, 8), (2, 2, 6, 8), (2, 2, 6, 3)),
        {"enable_gqa": True},
        torchbp.ShapeError,
        "heads",
    ),
    "fewer heads without enable_gqa": (
        ((2, 4, 5, 8), (2, 2, 6, 8), (2, 2, 6, 3)),
        {},
        torchbp.ShapeError,
        "enable_gqa",
    ),
    "a mask of the wrong shape": (
        ((2, 5, 8), (2, 6, 8), (2, 6, 3)),
        {"attn_mask": torch.ones(5, 7, dtype=torch.bool)},
        torchbp.ShapeError,
        r"broadcastable to \(2, 5, 6\).*got \(5, 7\)",
    ),
    "a mask and is_causal": (
        ((2, 5, 8), (2, 6, 8), (2, 6, 3)),
        {"attn_mask": torch.ones(5, 6, dtype=torch.bool), "is_causal": True},
        torchbp.ArgumentError,
        "not both",
    ),
    "a dropout probability above 1": (((2, 5, 8), (2, 6, 8), (2, 6, 3)), {"dropout_p": 1.5}, ValueError, "1.5"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_before_any_arithmetic(case):
    shapes, options, error, text = BAD_INPUT[case]
    with pytest.raises(error, match=text):
        sdpa(*tensors(*shapes), **options)


def test_integer_inputs_are_refused():
    with pytest.raises(torchbp.DTypeError):
        sdpa(torch.ones(2, 5, 8, dtype=torch.int64), *tensors((2, 6, 8), (2, 6, 3)))


def run_seeded(attention, shapes, **options):
    """Output, the three input gradients and the random state's next draw, from one seed."""
    torch.manual_seed(0)
    inputs = [t.requires_grad_() for t in tensors(*shapes)]
    output = attention(*inputs, **options)
    output.backward(torch.ones_like(output))
    return [output.detach(), *(t.grad for t in inputs), torch.rand(3)]


@pytest.mark.parametrize("p", [0.3, 1.0])
@pytest.mark.parametrize("case", ["heads", "causal", "grouped query heads"])
def test_dropout_draws_as_native_does_so_both_sides_agree(case, p):
    *shapes, options = CASES[case]
    ours = run_seeded(sdpa, shapes, dropout_p=p, **options)
    native = run_seeded(F.scaled_dot_product_attention, shapes, dropout_p=p, **options)
    for mine, theirs in zip(ours, native):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_dropout_left_out_of_the_backward_is_caught(monkeypatch):
    monkeypatch.setattr(attention, "times_factor", lambda g, factor, scale: g)
    *shapes, options = CASES["heads"]
    ours = run_seeded(sdpa, shapes, dropout_p=0.3, **options)
    native = run_seeded(F.scaled_dot_product_attention, shapes, dropout_p=0.3, **options)
    torch.testing.assert_close(ours[0], native[0])  # the same output: the forward drops alike
    assert not torch.allclose(ours[3], native[3])  # ∂J/∂V = P_dᵀ G needs the dropped weights
