"""torchbp.verify catches each mistake in the corpus (tests/verify_corpus.py) by exactly the properties that name it.

For every entry, the broken Function fails exactly its ``fails`` set and its
correct twin fails nothing. Taken together, the entries reach every property
that can run without a GPU. The tests after the corpus pin down what verify
declares on purpose (once-differentiable backwards, no CUDA device, a
broadcast gradient that autograd sums by itself) and the stream verify draws
its upstream gradient from.
"""

import pytest
import torch
import torch.nn.functional as F

from torchbp.verification import VERIFY_PROPERTIES, verify

from verify_corpus import (
    CORPUS,
    ContiguousOnly,
    Linear,
    NoVmapRule,
    OldStyleLinear,
    OnceDifferentiableSigmoid,
    SigmoidWithJvp,
    TransposedGradient,
    UnsummedBias,
    batch_inputs,
    linear_inputs,
)
from verify_corpus_in_the_wild import CORPUS as WILD

# aot_eager, not verify's default inductor. Dynamo finds the same graph breaks and
# AOT autograd traces the same backward under both; inductor only adds code
# generation, which costs seconds for each Function and catches none of these mistakes.
BACKEND = "aot_eager"


def run(fn, entry, **options):
    return verify(fn, entry.reference, *entry.inputs(), compile_backend=BACKEND, **{**entry.options, **options})


def failed(report) -> set:
    return {name for name, status in report.statuses().items() if status == "fail"}


@pytest.mark.filterwarnings("ignore:The use of `x.T` on tensors of dimension other than 2")  # a mistake's own
@pytest.mark.parametrize("entry", CORPUS, ids=lambda entry: entry.name)
def test_the_mistake_fails_exactly_the_properties_that_name_it(entry):
    report = run(entry.broken, entry)
    assert failed(report) == entry.fails, f"expected to fail {sorted(entry.fails)}: {entry.why}\n{report}"


@pytest.mark.parametrize("entry", CORPUS, ids=lambda entry: entry.name)
def test_its_twin_fails_nothing(entry):
    report = run(entry.twin, entry)
    assert not failed(report), str(report)


def test_the_corpus_reaches_every_property_but_cuda():
    assert len({entry.name for entry in CORPUS}) == len(CORPUS), "entry names are test ids: keep them unique"
    for entry in CORPUS:
        assert entry.fails and entry.fails <= set(VERIFY_PROPERTIES), entry.name
        assert entry.why, entry.name
    in_the_wild = frozenset().union(*(entry.fails for entry in WILD))  # the custom ops' rows are caught there
    caught = frozenset().union(*(entry.fails for entry in CORPUS)) | in_the_wild
    assert caught == set(VERIFY_PROPERTIES) - {"cuda"}  # cuda is skipped on a machine without a GPU


def test_cuda_is_skipped_without_a_gpu():
    report = verify(Linear.apply, F.linear, *linear_inputs(), only=["cuda"])
    assert report.statuses() == {"cuda": "pass" if torch.cuda.is_available() else "skipped"}, str(report)


def test_a_declared_once_differentiable_backward_makes_double_backward_not_applicable():
    report = verify(
        OnceDifferentiableSigmoid.apply,
        torch.sigmoid,
        *batch_inputs(),
        once_differentiable=True,
        compile_backend=BACKEND,
    )
    assert report["double-backward"].status == "not applicable", str(report)
    assert not failed(report), str(report)


def test_an_unsummed_broadcast_gradient_is_no_mistake():
    # autograd sums a gradient of the broadcast shape, (n, o), back to the bias's (o,) by itself
    # (the engine's validate_outputs), so there is nothing for verify to catch.
    report = verify(UnsummedBias.apply, F.linear, *linear_inputs(), compile_backend=BACKEND)
    assert not failed(report), str(report)


def test_a_contiguous_only_gradient_is_silently_wrong_for_other_layouts():
    # In the corpus an expanded x also raises (out of as_strided's bounds) and the report names that; with no
    # batch dimension there is no expanded layout, and the wrong values of the other two layouts fail it alone.
    report = verify(
        ContiguousOnly.apply, F.linear, *linear_inputs(), batch_dims=[None, None, None], only=["non-contiguous"]
    )
    measured = report["non-contiguous"].measured
    assert report["non-contiguous"].status == "fail" and "(transposed)" in measured and "(strided)" in measured, str(
        report
    )


def test_dynamo_refuses_a_custom_jvp():
    # Why the "wrong jvp" entry skips compile: torch.compile(fullgraph=True) refuses any Function that defines a
    # jvp staticmethod, even a correct one. When Dynamo learns to trace it, this fails: drop the skip.
    report = verify(SigmoidWithJvp.apply, torch.sigmoid, *batch_inputs(), only=["compile"], compile_backend=BACKEND)
    assert report["compile"].status == "fail" and "custom jvp" in report["compile"].measured, str(report)


def test_examples_drawn_from_seed_0_still_show_a_transposed_gradient():
    # With the upstream gradient g drawn from the examples' own stream, g = x, gᵀx is symmetric and a
    # transposed weight gradient would agree with the reference; verify draws g from a stream of its own.
    generator = torch.Generator().manual_seed(0)
    x, W, b = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in [(6, 4), (4, 4), (4,)])
    report = verify(TransposedGradient.apply, F.linear, x, W, b, only=["float64", "float32"])
    assert failed(report) == {"float64", "float32"}, str(report)


def test_an_old_style_function_gets_one_diagnosis_on_every_torch_func_row():
    report = verify(OldStyleLinear.apply, F.linear, *linear_inputs(), only=["vmap", "vmap-grad", "jacrev", "jvp"])
    for row in report.rows:
        assert row.status == "fail" and row.measured.startswith("OldStyleLinear is an old-style autograd.Function")
        assert "move the ctx work to setup_context" in row.fix and "all fail for this one cause" in row.fix


def test_a_function_without_a_vmap_rule_fails_the_rows_that_vmap_its_forward_for_that_reason():
    report = verify(NoVmapRule.apply, F.linear, *linear_inputs(), only=["vmap", "vmap-grad", "jacrev"])
    assert report["jacrev"].status == "pass"
    for name in ("vmap", "vmap-grad"):
        assert report[name].measured == "NoVmapRule has no vmap rule"
        assert report[name].fix.startswith("set generate_vmap_rule = True")


def test_torchbps_own_functions_are_diagnosed_as_themselves_not_as_their_eager_twins():
    from torchbp.functions import LinearFunction

    report = verify(LinearFunction.apply, F.linear, *linear_inputs(), only=["vmap", "vmap-grad", "jacrev"])
    report.assert_ok()
