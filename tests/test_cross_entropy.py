"""CrossEntropyFunction against native F.cross_entropy: targets, reductions, bits, transforms, bad input."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.gradcheck import GradcheckError

import torchbp
import torchbp.layers.cross_entropy as cross_entropy
from torchbp.check import check_function
from torchbp.layers.cross_entropy import ArgumentError, ClassIndexError, CrossEntropyFunction, class_dim
from torchbp.verification.custom_ops import CUSTOM_OP_PROPERTIES
from torchbp.verification.report import NOT_APPLICABLE, PASS, SKIPPED

f32, f64 = torch.float32, torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def in_dtype(weight, z):
    return None if weight is None else weight.to(z.dtype)


def ours(reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None):
    return lambda z, t: CrossEntropyFunction.apply(  # ℓ, not log p
        z, t, reduction, ignore_index, label_smoothing, in_dtype(weight, z)
    )[0]


def native(reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None):
    return lambda z, t: F.cross_entropy(
        z, t, in_dtype(weight, z), reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
    )


def class_weights(classes, zero=None, seed=3):
    """Positive weights, one per class (one of them 0 where ``zero`` names it)."""
    w = torch.rand(classes, generator=torch.Generator().manual_seed(seed), dtype=f64) + 0.25
    if zero is not None:
        w[zero] = 0.0
    return w


def logits(*shape, dtype=f64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=f64).to(dtype).requires_grad_()


def class_indices(z, ignored=(), ignore_index=-100, seed=1):
    """A class index for every position of z, ignore_index at the positions listed in ``ignored``."""
    dim = class_dim(z)
    shape = z.shape[:dim] + z.shape[dim + 1 :]
    t = torch.randint(0, z.shape[dim], shape, generator=torch.Generator().manual_seed(seed))
    for position in ignored:
        t[position] = ignore_index
    return t


def probabilities(z, seed=2):
    """A class distribution for every position of z, of z's dtype; it requires grad, as native gives it one."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(z.shape, generator=generator, dtype=f64).softmax(class_dim(z))
    return q.to(z.dtype).requires_grad_()


# -- against native: every kind of target, reduction and shape ---------------------------------------

CASES = {
    "indices": dict(shape=(6, 5)),
    "indices, unbatched": dict(shape=(5,)),
    "indices, (N, C, d1)": dict(shape=(3, 5, 4)),
    "indices, (N, C, d1, d2)": dict(shape=(2, 5, 3, 2)),
    "indices, ignore_index -100": dict(shape=(6, 5), ignored=[1, 4]),
    "indices, ignore_index a class": dict(shape=(6, 5), ignored=[1, 4], ignore_index=2),
    "indices, every target ignored": dict(shape=(3, 5), ignored=[0, 1, 2]),
    "indices, smoothing": dict(shape=(6, 5), label_smoothing=0.1),
    "indices, smoothing, ignored, (N, C, d1)": dict(shape=(3, 5, 4), ignored=[(0, 1), (2, 3)], label_smoothing=0.2),
    "indices, smoothing 1": dict(shape=(6, 5), label_smoothing=1.0),
    "indices, empty batch": dict(shape=(0, 5)),
    "probabilities": dict(shape=(6, 5), target="probabilities"),
    "probabilities, unbatched": dict(shape=(5,), target="probabilities"),
    "probabilities, (N, C, d1)": dict(shape=(3, 5, 4), target="probabilities"),
    "probabilities, smoothing": dict(shape=(6, 5), target="probabilities", label_smoothing=0.3),
    "probabilities, empty batch": dict(shape=(0, 5), target="probabilities"),
    "indices, class weights": dict(shape=(6, 5), weight=class_weights(5)),
    "indices, class weights, unbatched": dict(shape=(5,), weight=class_weights(5)),
    "indices, class weights, ignored, smoothing, (N, C, d1)": dict(
        shape=(3, 5, 4), ignored=[(0, 1), (2, 3)], label_smoothing=0.2, weight=class_weights(5)
    ),
    "indices, class weights, ignore_index a class": dict(
        shape=(6, 5), ignored=[1, 4], ignore_index=2, weight=class_weights(5)
    ),
    "indices, a class weight 0": dict(shape=(6, 5), weight=class_weights(5, zero=1)),
    "indices, class weights, empty batch": dict(shape=(0, 5), weight=class_weights(5)),
    "probabilities, class weights, smoothing": dict(
        shape=(6, 5), target="probabilities", label_smoothing=0.3, weight=class_weights(5)
    ),
    "probabilities, class weights, (N, C, d1)": dict(shape=(3, 5, 4), target="probabilities", weight=class_weights(5)),
}


def case_inputs(case, dtype=f64):
    z = logits(*case["shape"], dtype=dtype)
    if case.get("target") == "probabilities":
        return z, probabilities(z)
    return z, class_indices(z, case.get("ignored", ()), case.get("ignore_index", -100))


def case_functions(case, reduction):
    options = dict(
        ignore_index=case.get("ignore_index", -100),
        label_smoothing=case.get("label_smoothing", 0.0),
        weight=case.get("weight"),
    )
    return ours(reduction, **options), native(reduction, **options)


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES)
def test_matches_native(case, reduction, dtype):
    fn, reference = case_functions(CASES[case], reduction)
    check_function(fn, reference, *case_inputs(CASES[case], dtype)).assert_ok()


UNMASKED = [name for name, case in CASES.items() if case.get("target") != "probabilities" and not case.get("ignored")]


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", UNMASKED)
def test_where_no_target_is_ignored_the_unmasked_path_gives_the_masked_paths_bits(case, reduction, dtype, monkeypatch):
    """Eagerly on the CPU, with no target ignored, the backward scatters s at t_n without the masks of
    ignored targets; the masked path, taken elsewhere, gives the same bits."""
    fn, _ = case_functions(CASES[case], reduction)
    z, target = case_inputs(CASES[case], dtype)
    g = torch.randn(fn(z, target).shape, dtype=dtype, generator=torch.Generator().manual_seed(2))

    def grad():
        leaf = z.clone().requires_grad_()
        return torch.autograd.grad(fn(leaf, target), leaf, g)[0]

    taken = []
    counted = cross_entropy.every_target_counted
    monkeypatch.setattr(cross_entropy, "every_target_counted", lambda *args: taken.append(counted(*args)) or taken[-1])
    unmasked = grad()
    monkeypatch.setattr(cross_entropy, "every_target_counted", lambda *args: False)
    assert taken == [True] and torch.equal(unmasked, grad())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "case", ["indices, (N, C, d1)", "indices, smoothing, ignored, (N, C, d1)", "probabilities, smoothing"]
)
def test_matches_native_to_the_rounding_of_half_precision(case, reduction, dtype):
    fn, reference = case_functions(CASES[case], reduction)
    check_function(fn, reference, *case_inputs(CASES[case], dtype)).assert_ok()


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES)
def test_the_loss_is_natives_to_the_bit(case, reduction, dtype):
    fn, reference = case_functions(CASES[case], reduction)
    z, t = case_inputs(CASES[case], dtype)
    with torch.no_grad():
        torch.testing.assert_close(fn(z, t), reference(z, t), rtol=0, atol=0, equal_nan=True)  # the mean of nothing


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", [c for c in CASES if CASES[c].get("target") == "probabilities"])
def test_the_target_gradient_is_natives_to_the_bit(case, reduction, dtype):
    # ∂J/∂q = −s log p (1 − ε): the products native's autograd takes, in its order.
    fn, reference = case_functions(CASES[case], reduction)
    z, q = case_inputs(CASES[case], dtype)
    grads = []
    for f in (fn, reference):
        leaf = q.detach().requires_grad_()
        out = f(z.detach(), leaf)
        grads += torch.autograd.grad(out, leaf, torch.ones_like(out) * 0.7)
    assert torch.equal(*grads)


def natives_exponential(log_p: torch.Tensor) -> torch.Tensor:
    """e^{log p} as native's log-softmax backward computes it. Its u − e^{log p} Σ_c u, for u = −1 at one
    class and 0 at the others, is exactly e^{log p} at every other class: two such u cover every class."""
    dim = class_dim(log_p)
    classes = log_p.shape[dim]

    def others_than(c):
        u = torch.zeros_like(log_p)
        u.select(dim, c).fill_(-1)
        return torch._log_softmax_backward_data(u, log_p, dim, log_p.dtype)

    first = (torch.arange(classes) == 0).reshape(classes, *[1] * (log_p.dim() - dim - 1))
    return torch.where(first, others_than(1), others_than(0))


@pytest.mark.parametrize("dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
# With class weights, native's kernel sums the mean's Σ_n w_{t_n} in an order of its own (so not compared here).
@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CASES
        if CASES[c].get("target") is None and not (CASES[c].get("label_smoothing") or "weight" in CASES[c])
    ],
)
def test_index_gradients_are_natives_bits_but_for_the_exponential(case, reduction, dtype, monkeypatch):
    """torch.exp and native's log-softmax kernel round e^{log p} differently in about one element in ten
    (see the class docstring). With native's exponential in place of torch.exp, every other operation of
    the backward is native's to the bit: p Σ s q − s q as one multiply-add, in native's order."""
    fn, reference = case_functions(CASES[case], reduction)
    z, t = case_inputs(CASES[case], dtype)
    grads = []
    for f in (reference, fn):
        leaf = z.detach().requires_grad_()
        out = f(leaf, t)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=f64).to(dtype)
        if f is fn:
            monkeypatch.setattr(torch.Tensor, "exp", natives_exponential)
        grads += torch.autograd.grad(out, leaf, g)
        monkeypatch.undo()
    assert torch.equal(*grads)


def test_the_recorded_backward_gives_the_bits_of_the_one_that_multiplies_in_place():
    z, t = logits(6, 5), class_indices(logits(6, 5))
    plain = torch.autograd.grad(ours()(z, t), z)[0]
    recorded = torch.autograd.grad(ours()(z, t), z, create_graph=True)[0]  # no product in place there
    assert recorded.requires_grad and torch.equal(plain, recorded.detach())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8], ids=str)
def test_any_integer_dtype_of_class_indices_gives_the_int64_result(dtype):
    z, t = logits(6, 5), class_indices(logits(6, 5))
    check_function(lambda z: ours()(z, t.to(dtype)), lambda z: native()(z, t), z).assert_ok()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", ["indices", "probabilities"])
def test_no_classes_gives_natives_result(target, reduction):
    z = logits(3, 0)
    t = probabilities(z) if target == "probabilities" else torch.full((3,), -100)
    for smoothing in (0.0, 0.1):
        check_function(
            ours(reduction, label_smoothing=smoothing), native(reduction, label_smoothing=smoothing), z, t
        ).assert_ok()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("target", ["indices", "probabilities"])
def test_nan_and_inf_flow_through_as_in_native_torch(target, value):
    z = logits(5, 4).detach()
    z[1, 2] = z[3, 0] = value
    t = probabilities(z) if target == "probabilities" else torch.tensor([0, 2, 1, 0, 3])
    for smoothing in (0.0, 0.1):
        check_function(
            ours(label_smoothing=smoothing), native(label_smoothing=smoothing), z.requires_grad_(), t
        ).assert_ok()


@given(
    n=st.integers(0, 4),
    classes=st.integers(1, 5),
    extra=st.lists(st.integers(0, 3), max_size=2),
    target=st.sampled_from(["indices", "probabilities"]),
    reduction=st.sampled_from(REDUCTIONS),
    ignore_every_third=st.booleans(),
    label_smoothing=st.sampled_from([0.0, 0.25]),
    dtype=st.sampled_from([f32, f64]),
)
def test_matches_native_for_any_shape(n, classes, extra, target, reduction, ignore_every_third, label_smoothing, dtype):
    z = logits(n, classes, *extra, dtype=dtype)
    if target == "probabilities":
        t = probabilities(z)
    else:
        t = class_indices(z)
        if ignore_every_third:
            t.view(-1)[::3] = -100
    check_function(ours(reduction, -100, label_smoothing), native(reduction, -100, label_smoothing), z, t).assert_ok()


# -- gradcheck, second derivatives, torchbp.verify ----------------------------------------------------

GRADCHECK_CASES = {  # verify's cases below run gradcheck and gradgradcheck too
    "indices, unbatched": (ours("mean"), lambda: (logits(3), torch.tensor(1))),
    "indices, (N, C, d1), sum, ignored, smoothing": (
        ours("sum", 1, 0.2),
        lambda: (logits(2, 3, 2), torch.tensor([[0, 1], [2, 1]])),
    ),
    "probabilities, (N, C, d1), none, smoothing": (
        ours("none", -100, 0.1),
        lambda: (logits(2, 3, 2), probabilities(logits(2, 3, 2))),
    ),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    fn, make_inputs = GRADCHECK_CASES[case]
    assert torch.autograd.gradcheck(fn, make_inputs())


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradgradcheck(case):
    fn, make_inputs = GRADCHECK_CASES[case]
    assert torch.autograd.gradgradcheck(fn, make_inputs())


@pytest.mark.parametrize("target", ["indices", "probabilities"])
def test_hessian_matches_native(target):
    z = logits(3, 4).detach()
    t = probabilities(z).detach() if target == "probabilities" else torch.tensor([0, -100, 3])
    hessian = torch.func.jacrev(torch.func.jacrev(lambda z: ours("mean", -100, 0.1)(z, t)))(z)  # no forward mode
    torch.testing.assert_close(hessian, torch.func.hessian(lambda z: native("mean", -100, 0.1)(z, t))(z))


def examples(shape, target, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=generator)
    if target == "probabilities":
        return z, torch.rand(shape, generator=generator).softmax(1)
    return z, torch.randint(0, shape[1], shape[:1] + shape[2:], generator=generator)


INDEX_BATCH = dict(batch_dims=(0, 0, None, None, None, None))  # the integer target is batched too (not by shape)
WEIGHTS = class_weights(5).float()
VERIFY_CASES = {
    "indices, mean": (examples((6, 5), "indices"), ("mean", -100, 0.0, None), INDEX_BATCH),
    "indices, none, ignore_index a class, smoothing": (
        examples((6, 5), "indices"),
        ("none", 3, 0.2, None),
        INDEX_BATCH,
    ),
    # Batched along d1: each sample is (N, C) with N targets, a shape native accepts.
    "indices, (N, C, d1), sum": (
        examples((2, 4, 5), "indices"),
        ("sum", -100, 0.0, None),
        dict(batch_dims=(2, 1, None, None, None, None)),
    ),
    "probabilities, mean, smoothing": (examples((6, 5), "probabilities"), ("mean", -100, 0.1, None), {}),
    # Class weights get no gradient, here as natively: nondiff.
    "indices, mean, class weights, ignore_index a class, smoothing": (
        examples((6, 5), "indices"),
        ("mean", 3, 0.2, WEIGHTS),
        {**INDEX_BATCH, "nondiff": (5,)},
    ),
    "probabilities, sum, class weights": (
        examples((6, 5), "probabilities"),
        ("sum", -100, 0.0, WEIGHTS),
        {"nondiff": (5,)},
    ),
}


@pytest.mark.parametrize("case", VERIFY_CASES)
def test_verify_passes_every_property_that_applies(case):
    (z, t), (reduction, ignore_index, smoothing, weight), options = VERIFY_CASES[case]

    def reference(z, t, r, i, e, w):  # the Function returns ℓ and log p, as native log_softmax then the loss
        return F.cross_entropy(z, t, w, reduction=r, ignore_index=i, label_smoothing=e), F.log_softmax(z, class_dim(z))

    report = torchbp.verify(
        CrossEntropyFunction.apply,
        reference,
        z,
        t,
        reduction,
        ignore_index,
        smoothing,
        weight,
        skip=("autocast",),
        compile_backend="aot_eager",
        **options,
    )
    report.assert_ok()
    assert {row.name for row in report.rows if row.status == NOT_APPLICABLE} == {"jvp", *CUSTOM_OP_PROPERTIES}, report
    assert report["cuda"].status == (PASS if torch.cuda.is_available() else SKIPPED)


# -- what is saved -------------------------------------------------------------------------------------


def saved_by(fn, *inputs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*inputs)
    return saved


def saved_by_the_function(z, target):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _, log_p = CrossEntropyFunction.apply(z, target, "mean", -100, 0.0, None)
    return saved, log_p


def test_index_targets_save_log_p_and_the_target():
    z, t = logits(6, 5), class_indices(logits(6, 5))
    saved, log_p = saved_by_the_function(z, t)
    assert len(saved) == 2 and saved[0] is log_p and saved[1] is t  # native's bytes: its log-softmax and target
    torch.testing.assert_close(log_p, F.log_softmax(z, 1), rtol=0, atol=0)


def test_probability_targets_save_only_log_p_when_only_the_target_wants_a_gradient():
    z, q = logits(6, 5).detach(), probabilities(logits(6, 5))
    saved, log_p = saved_by_the_function(z, q)
    assert len(saved) == 1 and saved[0] is log_p  # −s log p reads log p alone; s q is for ∂J/∂z


@pytest.mark.parametrize("target", ["indices", "probabilities"])
def test_log_p_is_a_differentiable_output_whose_gradient_joins(target):
    # A gradient arriving at log p (the way double backward reaches it) goes through the log-softmax with ℓ's.
    z = logits(4, 3, dtype=torch.float64)
    t = class_indices(z) if target == "indices" else probabilities(logits(4, 3, dtype=torch.float64))
    both = lambda z: CrossEntropyFunction.apply(z, t, "mean", -100, 0.1, None)  # noqa: E731
    assert torch.autograd.gradcheck(both, (z,))
    weights = torch.randn(4, 3, dtype=torch.float64)
    loss, log_p = both(z)  # one node: both gradients arrive at its backward together
    ours_grad = torch.autograd.grad(loss + (log_p * weights).sum(), z)[0]
    native_loss = F.cross_entropy(z, t, label_smoothing=0.1)
    native_grad = torch.autograd.grad(native_loss + (F.log_softmax(z, 1) * weights).sum(), z)[0]
    torch.testing.assert_close(ours_grad, native_grad)
    (log_p_only,) = torch.autograd.grad((both(z)[1] * weights).sum(), z)  # ℓ takes no part
    torch.testing.assert_close(log_p_only, torch.autograd.grad((F.log_softmax(z, 1) * weights).sum(), z)[0])


# -- planted bugs: the checks above fail on a wrong formula ------------------------------------------

original_backward = cross_entropy.cross_entropy_backward
original_distribution = cross_entropy.index_distribution_times
original_one_hot = cross_entropy.one_hot_times


def with_arguments(**changed):
    """cross_entropy_backward with some arguments replaced: a wrong formula built from the right one."""
    names = [
        "g",
        "g_log_p",
        "log_p",
        "target",
        "probabilities",
        "reduction",
        "ignore_index",
        "label_smoothing",
        "need_z",
        "need_target",
        "weight",
    ]
    return lambda *args: original_backward(*{**dict(zip(names, args)), **changed}.values())


def negated_target_gradient(*args):
    grad_z, grad_q = original_backward(*args)
    return grad_z, None if grad_q is None else -grad_q


PLANTED_BUGS = {
    "softmax's Jacobian left out (u for u − p Σu)": (
        "through_log_softmax",
        lambda u, log_p, in_place: u,
        "indices, smoothing",
        "mean",
        ["inputs[0].grad"],
    ),
    "p Σu added instead of subtracted": (
        "through_log_softmax",
        lambda u, log_p, in_place: torch.addcmul(u, log_p.exp(), u.sum(class_dim(log_p), keepdim=True)),
        "indices",
        "sum",
        ["inputs[0].grad"],
    ),
    "Σ over the last dimension, not the classes": (
        "through_log_softmax",
        lambda u, log_p, in_place: torch.addcmul(u, log_p.exp(), u.sum(-1, keepdim=True), value=-1),
        "indices, (N, C, d1)",
        "mean",
        ["inputs[0].grad"],
    ),
    "the sum's scale for the mean": (
        "cross_entropy_backward",
        with_arguments(reduction="sum"),
        "probabilities",
        "mean",
        ["inputs[0].grad", "inputs[1].grad"],
    ),
    "ignored targets counted as class 0": (
        "index_distribution_times",
        lambda c, t, log_p, ignore_index, smoothing, *counted: original_distribution(
            c, t.clamp(min=0), log_p, -1, smoothing, *counted
        ),
        "indices, ignore_index -100",
        "none",
        ["inputs[0].grad"],
    ),
    "the one-hot at the next class": (
        "one_hot_times",
        lambda c, t, log_p: original_one_hot(c, (t + 1) % log_p.shape[class_dim(log_p)], log_p),
        "indices",
        "mean",
        ["inputs[0].grad"],
    ),
    "smoothing left out of the backward": (
        "cross_entropy_backward",
        with_arguments(label_smoothing=0.0),
        "probabilities, smoothing",
        "sum",
        ["inputs[0].grad", "inputs[1].grad"],
    ),
    "the target gradient's sign": (
        "cross_entropy_backward",
        negated_target_gradient,
        "probabilities",
        "none",
        ["inputs[1].grad"],
    ),
}


@pytest.mark.parametrize("bug", PLANTED_BUGS)
def test_a_planted_bug_is_caught_by_the_native_comparison_and_by_gradcheck(bug, monkeypatch):
    name, wrong, case, reduction, wrong_rows = PLANTED_BUGS[bug]
    monkeypatch.setattr(cross_entropy, name, wrong)
    fn, reference = case_functions(CASES[case], reduction)
    report = check_function(fn, reference, *case_inputs(CASES[case]))
    assert [row.name for row in report.mismatches] == wrong_rows, report
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(fn, case_inputs(CASES[case]))


# -- bad input ----------------------------------------------------------------------------------------

z5 = torch.randn(4, 5)
indices4 = torch.zeros(4, dtype=torch.int64)
BAD_INPUTS = {
    # name: (call, given ours or native; error; words in the message; whether native refuses it, with an error
    # whose type also catches ours). Native accepts a float64 target (promoting it), a negative label_smoothing
    # (as 0) and an unbatched input with a target of one index; it refuses an integer input from its kernel,
    # with a NotImplementedError.
    "class index C": (lambda loss: loss()(z5, torch.tensor([0, 5, 1, 2])), ClassIndexError, ["[0, 5)", "got 5"], True),
    "negative class index": (
        lambda loss: loss()(z5, torch.tensor([0, -1, 1, 2])),
        ClassIndexError,
        ["[0, 5)", "ignore_index -100", "got -1"],
        True,
    ),
    "class index beyond C, spatial": (
        lambda loss: loss(ignore_index=7)(torch.randn(2, 5, 3), torch.tensor([[0, 7, 1], [9, 2, 2]])),
        ClassIndexError,
        ["[0, 5)", "got 9", "(2, 3)"],
        True,
    ),
    "index target of another batch size": (
        lambda loss: loss()(z5, torch.tensor([0, 1, 2])),
        torchbp.ShapeError,
        ["(4,)", "(3,)", "(4, 5)"],
        True,
    ),
    "index target with a class dimension": (
        lambda loss: loss()(z5, torch.zeros(4, 5, dtype=torch.int64)),
        torchbp.ShapeError,
        ["(4,)", "(4, 5)"],
        True,
    ),
    "spatial index target of the wrong size": (
        lambda loss: loss()(torch.randn(2, 5, 3), torch.zeros(2, 4, dtype=torch.int64)),
        torchbp.ShapeError,
        ["(2, 3)", "(2, 4)"],
        True,
    ),
    "unbatched input with a batched target": (
        lambda loss: loss()(torch.randn(5), torch.tensor([1])),
        torchbp.ShapeError,
        ["()", "(1,)"],
        False,
    ),
    "float target of another shape": (
        lambda loss: loss()(z5, torch.rand(4)),
        torchbp.ShapeError,
        ["(4, 5)", "(4,)", "integer dtype"],
        True,
    ),
    "probability target of another dtype": (
        lambda loss: loss()(z5, torch.rand(4, 5, dtype=f64)),
        torchbp.DTypeError,
        ["torch.float32", "torch.float64"],
        False,
    ),
    "boolean target": (
        lambda loss: loss()(z5, torch.ones(4, dtype=torch.bool)),
        torchbp.DTypeError,
        ["torch.bool", "integer"],
        True,
    ),
    "integer input": (
        lambda loss: loss()(torch.ones(4, 5, dtype=torch.int64), indices4),
        torchbp.DTypeError,
        ["floating-point", "torch.int64"],
        False,
    ),
    "0-d input": (lambda loss: loss()(torch.tensor(1.0), torch.tensor(0)), torchbp.ShapeError, ["(C,)", "()"], True),
    "target on another device": (
        lambda loss: loss()(z5, torch.zeros(4, dtype=torch.int64, device="meta")),
        torchbp.DeviceError,
        ["cpu", "meta"],
        True,
    ),
    "target not a tensor": (lambda loss: loss()(z5, [0, 1, 2, 3]), TypeError, ["torch.Tensor", "list"], True),
    "label_smoothing above 1": (
        lambda loss: loss(label_smoothing=1.5)(z5, indices4),
        ArgumentError,
        ["label_smoothing", "[0, 1]", "1.5"],
        True,
    ),
    "negative label_smoothing": (
        lambda loss: loss(label_smoothing=-0.1)(z5, torch.rand(4, 5)),
        ArgumentError,
        ["[0, 1]", "-0.1"],
        False,
    ),
    "ignore_index with probability targets": (
        lambda loss: loss(ignore_index=3)(z5, torch.rand(4, 5)),
        ArgumentError,
        ["ignore_index 3", "probabilities"],
        True,
    ),
    "unknown reduction": (
        lambda loss: loss("average")(z5, indices4),
        ValueError,
        ["average is not a valid value for reduction"],
        True,
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(case):
    call, error, words, _ = BAD_INPUTS[case]
    with pytest.raises(error) as raised:
        call(ours)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if BAD_INPUTS[c][3]])
def test_input_native_refuses_is_refused_with_an_error_natives_handler_catches(case):
    call = BAD_INPUTS[case][0]
    with pytest.raises(Exception) as theirs:
        call(native)
    with pytest.raises(type(theirs.value)):
        call(ours)


def test_an_out_of_range_class_index_is_refused_under_vmap_and_compile_too():
    """The eager check reads the target's values; transforms and the compiler cannot, and there the
    forward's nll_loss refuses the index: no gradient is ever computed from it."""
    z, t = torch.randn(3, 2, 5), torch.tensor([[0, 1], [5, 2], [1, 1]])
    with pytest.raises(RuntimeError, match="out of bounds"):
        torch.func.vmap(ours())(z, t)
    torch._dynamo.reset()
    try:
        with pytest.raises(IndexError, match="out of bounds"):
            torch.compile(ours(), fullgraph=True, backend="aot_eager")(z[1], t[1])
    finally:
        torch._dynamo.reset()
