"""docs/derivation.md: its numbers and code references are the code's, and the three ways agree."""

import re
from pathlib import Path

import pytest

import torchbp.functions.sigmoid
from experiments.__main__ import main
from experiments.derivation.explain import render, three_ways

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


def test_every_generated_block_is_filled():
    document = DOCUMENT.read_text()
    names = re.findall(r"<!-- generated: ([\w-]+) -->\n(?!<!-- end)", document)
    assert set(names) == {"samples", "forward", "backward", "per-sample", "update", "three-ways", "code"}


def test_numpy_torchbp_and_autograd_agree():
    numbers = three_ways()
    assert all(difference <= 1e-12 for difference in numbers["differences"].values())
    per_sample = numbers["values"]["per_sample_dJ_dW2"]
    assert per_sample.shape == (5, 1, 3)
    assert abs(per_sample.sum(0) - numbers["values"]["dJ_dW2"]).max() < 1e-15


def test_a_wrong_hand_derived_backward_makes_the_three_ways_disagree(monkeypatch):
    original = torchbp.functions.sigmoid.sigmoid_backward
    monkeypatch.setattr(torchbp.functions.sigmoid, "sigmoid_backward", lambda g, a: original(g, a) * 1.001)
    with pytest.raises(AssertionError, match="disagree"):
        three_ways()


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
