"""verify on Functions and custom ops as people write them (tests/verify_corpus_in_the_wild.py): each fails exactly
the rows its entry names, each failure's fix names the actual cause, and a correct one fails nothing."""

import pytest

from torchbp.verification import verify

from verify_corpus_in_the_wild import CORPUS

# What PyTorch itself warns while opcheck and the transforms run the broken ops (anomaly mode's tracebacks, an
# op without an autograd kernel): the rows report the same causes.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Error detected in GeneratedBackwardFor:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered:UserWarning"),
]

BACKEND = "aot_eager"  # the graph breaks and traced backwards inductor sees, without its code generation


@pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated")  # an entry's own old name
@pytest.mark.parametrize("entry", CORPUS, ids=lambda entry: entry.name)
def test_it_fails_exactly_its_rows_each_with_the_fix_for_its_cause(entry):
    report = verify(entry.fn, entry.reference, *entry.inputs(), **{"compile_backend": BACKEND, **entry.options})
    failed = {row.name for row in report.rows if row.status == "fail"}
    assert failed == entry.fails, str(report)
    for name, words in entry.fixes.items():
        assert words in report[name].fix, (name, report[name].fix)


def test_the_corpus_holds_every_style_the_issue_lists():
    names = {entry.name for entry in CORPUS}
    assert len(names) == len(CORPUS) >= 10
    assert sum(not entry.fails for entry in CORPUS) >= 5  # correct ones, which must fail nothing
    assert {"opcheck-schema", "opcheck-fake", "opcheck-aot"} <= set().union(*(entry.fails for entry in CORPUS))


def test_a_custom_op_is_named_by_its_qualified_name():
    (op,) = [entry.fn for entry in CORPUS if entry.name == "a custom op"]
    (entry,) = [entry for entry in CORPUS if entry.name == "a custom op"]
    report = verify(op, entry.reference, *entry.inputs(), compile_backend=BACKEND, only=["float64"])
    assert str(report).startswith("verify(torchbp_corpus::swish): OK")
