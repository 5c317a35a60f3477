"""MultiheadAttention built on the hand-derived Linear and attention, and the transformer layers converted with it.

Cases are data: each MHA configuration and call below, against native's module on the same parameters.
"""

import warnings

import pytest
import torch

import torchbp
from torchbp.check import check_model

from conftest import per_sample_by_torch_func

f64 = torch.float64
N, L, S, E = 3, 5, 6, 8


class Call(torch.nn.Module):
    """An attention module called with fixed options; returns its output (and, on request, its weights)."""

    def __init__(self, attention, self_attention=True, weights=False, **options):
        super().__init__()
        self.attention, self.self_attention, self.weights, self.options = attention, self_attention, weights, options

    def forward(self, x):
        memory = x if self.self_attention else x[..., :S, :] if self.attention.batch_first else x[:S]
        output, weights = self.attention(x, memory, memory, **self.options)
        return output if not self.weights else torch.cat([output.flatten(), weights.flatten()])


def causal(n=L):
    return torch.triu(torch.ones(n, n, dtype=torch.bool), 1)


def padding():
    mask = torch.zeros(N, L, dtype=torch.bool)
    mask[1, 3:] = True
    return mask


# name: (MultiheadAttention's options, Call's options)
CASES = {
    "self-attention": (dict(), dict(need_weights=False)),
    "batch_first": (dict(batch_first=True), dict(need_weights=False)),
    "cross-attention": (dict(), dict(self_attention=False)),
    "kdim and vdim (separate weights)": (dict(kdim=E, vdim=E, bias=False), dict(self_attention=False)),
    "no bias": (dict(bias=False), dict()),
    "causal attn_mask": (dict(), dict(attn_mask=causal())),
    "causal, is_causal hint": (dict(batch_first=True), dict(attn_mask=causal(), is_causal=True, need_weights=False)),
    "float attn_mask": (dict(), dict(attn_mask=torch.randn(L, L, dtype=f64))),
    "key_padding_mask": (dict(), dict(key_padding_mask=padding())),
    "both masks": (dict(batch_first=True), dict(attn_mask=causal(), key_padding_mask=padding())),
    "weights returned": (dict(), dict(weights=True)),
    "weights per head": (dict(), dict(weights=True, average_attn_weights=False)),
    "add_bias_kv, both masks": (dict(add_bias_kv=True), dict(attn_mask=causal(), key_padding_mask=padding())),
    "add_zero_attn, weights": (dict(add_zero_attn=True, batch_first=True), dict(weights=True)),
    "add_bias_kv and add_zero_attn, cross-attention": (
        dict(add_bias_kv=True, add_zero_attn=True),
        dict(self_attention=False),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_native(case):
    options, call = CASES[case]
    torch.manual_seed(0)
    native = Call(torch.nn.MultiheadAttention(E, 2, **options).double(), **call)
    x = torch.randn((N, L, E) if options.get("batch_first") else (L, N, E), dtype=f64)
    report = check_model(native, torch.nn.MSELoss(), x, torch.randn_like(native(x)))
    report.assert_ok()
    assert "attention MultiheadAttention" in report.layers


def test_an_unbatched_sequence_matches_native():
    torch.manual_seed(0)
    native = Call(torch.nn.MultiheadAttention(E, 2).double(), weights=True)
    x = torch.randn(L, E, dtype=f64)
    check_model(native, torch.nn.MSELoss(), x, torch.randn_like(native(x))).assert_ok()


def test_a_planted_wrong_attention_backward_is_caught(monkeypatch):
    import torchbp.layers.attention as attention

    monkeypatch.setattr(attention, "softmax_backward", lambda g, y, dim: g * y)
    torch.manual_seed(0)
    native = Call(torch.nn.MultiheadAttention(E, 2).double(), need_weights=False)
    x = torch.randn(L, N, E, dtype=f64)
    report = check_model(native, torch.nn.MSELoss(), x, torch.randn(L, N, E, dtype=f64))
    assert not report.ok and "attention.in_proj_weight.grad" in [row.name for row in report.mismatches]


TRANSFORMERS = {
    "encoder, pre-norm, GELU": lambda: torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(
            E, 2, 16, dropout=0.0, activation=torch.nn.GELU(), batch_first=True, norm_first=True
        ),
        num_layers=2,
        enable_nested_tensor=False,
    ),
    "decoder layer, post-norm": lambda: DecoderOnItself(
        torch.nn.TransformerDecoderLayer(E, 2, 16, dropout=0.0, activation=torch.nn.ReLU(), batch_first=True)
    ),
}


class DecoderOnItself(torch.nn.Module):
    """A decoder layer attending to its own input as memory, with a causal mask on itself."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, x, tgt_mask=causal(x.shape[1]), tgt_is_causal=True)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_convert_runs_a_transformer_hand_derived_end_to_end(name):
    torch.manual_seed(0)
    native = TRANSFORMERS[name]().double()
    x = torch.randn(N, L, E, dtype=f64)
    report = check_model(native, torch.nn.MSELoss(), x, torch.randn(N, L, E, dtype=f64))
    report.assert_ok()
    assert report.layers.endswith("native: none") and "MultiheadAttention" in report.layers, report.layers


def test_static_keys_are_refused_by_the_functional_form():
    x = torch.randn(L, N, E, dtype=f64)
    native = torch.nn.MultiheadAttention(E, 2).double()
    with pytest.raises(NotImplementedError, match="static_k and static_v"):
        torchbp.functional.multi_head_attention_forward(
            x, x, x, E, 2, native.in_proj_weight, native.in_proj_bias, None, None, False, 0.0,
            native.out_proj.weight, native.out_proj.bias, static_k=torch.randn(N * 2, L, E // 2, dtype=f64),
        )  # fmt: skip


def test_the_module_keeps_natives_parameters_and_state_dict():
    torch.manual_seed(0)
    native = torch.nn.MultiheadAttention(E, 2)
    torch.manual_seed(0)
    ours = torchbp.nn.MultiheadAttention(E, 2)
    assert native.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(native.state_dict().values(), ours.state_dict().values()))
    assert type(torchbp.to_native(torchbp.convert(native))) is torch.nn.MultiheadAttention


def test_is_causal_without_a_mask_is_refused_as_natively():
    x = torch.randn(L, N, E)
    with pytest.raises(RuntimeError, match="is_causal"):
        torchbp.nn.MultiheadAttention(E, 2)(x, x, x, is_causal=True)


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_dropout_draws_as_native_does(need_weights):
    torch.manual_seed(0)
    native = torch.nn.MultiheadAttention(E, 2, dropout=0.2, batch_first=True).double()
    ours = torchbp.convert(native)
    x = torch.randn(N, L, E, dtype=f64)
    torch.manual_seed(1)
    expected = native(x, x, x, need_weights=need_weights)
    torch.manual_seed(1)
    got = ours(x, x, x, need_weights=need_weights)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    assert (got[1] is None) == (expected[1] is None) == (not need_weights)
    if need_weights:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)


def test_a_transformer_with_its_default_dropout_trains_in_lockstep():
    """TransformerEncoderLayer's default dropout 0.1, in attention and after it: every step matches, each side
    drawing the same masks from the trainer's replayed random state."""
    from torchbp.lockstep import LockstepTrainer

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(E, 2, 16, activation=torch.nn.GELU(), batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).double()
    assert "native: none" in torchbp.check_model(model.eval(), torch.nn.MSELoss(), *data()).layers
    trainer = LockstepTrainer(model.train(), torch.nn.MSELoss(), lr=0.05)
    records = [trainer.step(*data(seed)) for seed in range(4)]
    assert all(record.report.ok for record in records)


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(N, L, E, generator=generator, dtype=f64), torch.randn(N, L, E, generator=generator, dtype=f64)


class SamplesFirst(torch.nn.Module):
    """Attention on inputs (N, L, E) whatever layout the module takes, its key padding read off each sample's
    own input (a key whose first feature exceeds 0.8 is padding; the first key never is), plus the weights
    the loss reads where ``weights``: a model per-sample gradients can take."""

    def __init__(self, attention, padded=False, weights=False, **options):
        super().__init__()
        self.attention, self.padded, self.weights, self.options = attention, padded, weights, options

    def forward(self, x):
        padding = None
        if self.padded:
            padding = torch.cat([torch.zeros_like(x[:, :1, 0], dtype=torch.bool), x[:, 1:, 0] > 0.8], dim=1)
        sequence = x if self.attention.batch_first else x.transpose(0, 1)
        output, weights = self.attention(
            sequence, sequence, sequence, key_padding_mask=padding, need_weights=self.weights, **self.options
        )
        output = output if self.attention.batch_first else output.transpose(0, 1)
        if not self.weights:
            return output
        squared = weights.square().sum(-1)  # (N, L), or (N, H, L) per head
        return output + (squared.sum(1) if squared.dim() == 3 else squared).unsqueeze(-1)


# name: (MultiheadAttention's options, SamplesFirst's options)
PER_SAMPLE_CASES = {
    "sequence first": (dict(), dict()),
    "batch_first, causal": (dict(batch_first=True), dict(attn_mask=causal(), is_causal=True)),
    "no bias, float mask": (dict(bias=False), dict(attn_mask=torch.randn(L, L, dtype=f64))),
    "key padding": (dict(batch_first=True), dict(padded=True)),
    "weights read by the loss": (dict(batch_first=True), dict(weights=True)),
    "weights per head read by the loss": (dict(), dict(weights=True, average_attn_weights=False, padded=True)),
    "add_bias_kv and add_zero_attn": (dict(add_bias_kv=True, add_zero_attn=True), dict(padded=True)),
    "add_bias_kv, causal, weights": (dict(add_bias_kv=True, batch_first=True), dict(attn_mask=causal(), weights=True)),
}


@pytest.mark.parametrize("case", PER_SAMPLE_CASES)
def test_per_sample_gradients_are_torch_funcs(case):
    options, call = PER_SAMPLE_CASES[case]
    torch.manual_seed(0)
    model = SamplesFirst(torch.nn.MultiheadAttention(E, 2, **options).double(), **call)
    x = torch.randn(N, L, E, dtype=f64)
    target, loss_fn = torch.randn_like(model(x)), torch.nn.MSELoss()
    params = dict(model.named_parameters())
    with warnings.catch_warnings():  # vmap over native attention loops over the samples, and says so
        warnings.simplefilter("ignore", UserWarning)
        expected = per_sample_by_torch_func(model, loss_fn, x, target)
    grads = torchbp.per_sample_grads(model, loss_fn, x, target)
    assert list(grads) == list(params)
    for key in params:
        torch.testing.assert_close(grads[key], expected[key], rtol=1e-10, atol=1e-12)
    squared = sum(g.flatten(1).square().sum(1) for g in expected.values())
    torch.testing.assert_close(torchbp.per_sample_grad_norms(model, loss_fn, x, target), squared.sqrt())


def test_per_sample_gradients_refuse_dropout_in_training_and_take_it_in_eval():
    model = SamplesFirst(torch.nn.MultiheadAttention(E, 2, dropout=0.1, batch_first=True).double())
    x = torch.randn(N, L, E, dtype=f64)
    with pytest.raises(NotImplementedError, match=r"dropout=0.1.*would draw another mask; call eval\(\)"):
        torchbp.per_sample_grads(model, torch.nn.MSELoss(), x, torch.randn(N, L, E, dtype=f64))
    loss_fn, target = torch.nn.MSELoss(reduction="sum"), torch.zeros(N, L, E, dtype=f64)
    grads = torchbp.per_sample_grads(model.eval(), loss_fn, x, target)
    model.zero_grad()
    loss_fn(model(x), target).backward()
    for key, p in model.named_parameters():
        torch.testing.assert_close(grads[key].sum(0), p.grad)


def test_per_sample_gradients_refuse_an_unbatched_sequence():
    hand = torchbp.convert(torch.nn.MultiheadAttention(E, 2).double())
    x = torch.randn(L, E, dtype=f64, requires_grad=True)
    with torchbp.PerSampleGradients(hand), pytest.raises(torchbp.ShapeError, match=r"needs batched input.*\(5, 8\)"):
        hand(x, x, x)
