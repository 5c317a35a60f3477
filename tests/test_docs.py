"""Every code example of the README and of the documentation site runs, and prints what its page shows.

A ``python`` block runs in a fresh namespace, in a temporary folder (an example that logs writes its
``runs/`` there). Where the next paragraph begins "prints" and a ``text`` block follows it, that is the
example's output: compared exactly, or, where the page marks it ``<!-- output: statuses -->`` (figures
that vary with the machine's arithmetic), row by row on the name and status alone. A block marked
``<!-- example: runs in tests/<file>.py -->`` is run by that test file instead (a layer file, say,
which would enter the library's table twice); the test checks that the file does run the page's example.
Test functions an example defines are called with each of their parametrized values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)


class Example(NamedTuple):
    page: Path
    number: int  # counted among the page's python blocks
    code: str
    before: str  # the text between the previous block and this one
    output: str | None  # what the page shows it printing
    statuses_only: bool


def examples(page: Path) -> list[Example]:
    text = page.read_text()
    fences = list(FENCE.finditer(text))
    found = []
    for i, fence in enumerate(fences):
        if fence[1] != "python":
            continue
        before = text[fences[i - 1].end() if i else 0 : fence.start()]
        output, statuses_only = None, False
        if i + 1 < len(fences) and fences[i + 1][1] == "text":
            between = text[fence.end() : fences[i + 1].start()]
            if between.strip().startswith("prints"):
                output, statuses_only = fences[i + 1][2], "<!-- output: statuses -->" in between
        found.append(Example(page, len(found), fence[2], before, output, statuses_only))
    return found


EXAMPLES = [example for page in PAGES for example in examples(page)]
RUN_ELSEWHERE = re.compile(r"<!-- example: runs in (tests/\w+\.py) -->")


def name(example: Example) -> str:
    return f"{example.page.relative_to(ROOT)}[{example.number}]"


def statuses(table: str) -> tuple[list[str], list[list[str]]]:
    """A verify report's headline and input line, and each property's name and status."""
    lines = table.splitlines()
    return lines[:2], [re.split(r"\s{2,}", line)[:2] for line in lines[3:] if not line.startswith(" ")]


def run_defined_tests(namespace: dict) -> None:
    """Call each test function the example defined, once per parametrized value; a skip is a pass."""
    for key, fn in list(namespace.items()):
        if not (key.startswith("test_") and callable(fn)):
            continue
        marks = [mark for mark in getattr(fn, "pytestmark", []) if mark.name == "parametrize"]
        cases = [{mark.args[0]: value} for mark in marks for value in mark.args[1]] or [{}]
        for case in cases:
            try:
                fn(**case)
            except pytest.skip.Exception:
                pass


@pytest.mark.parametrize("example", EXAMPLES, ids=name)
def test_the_example_runs_and_prints_what_its_page_shows(example, capsys, tmp_path, monkeypatch):
    elsewhere = RUN_ELSEWHERE.search(example.before)
    if elsewhere:
        runner = (ROOT / elsewhere[1]).read_text()
        assert str(example.page.relative_to(ROOT)) in runner, f"{elsewhere[1]} does not run {name(example)}"
        return
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.code, name(example), "exec"), namespace)
    run_defined_tests(namespace)
    printed = capsys.readouterr().out
    assert "MISMATCH" not in printed
    if example.output is None:
        return
    if example.statuses_only:
        assert statuses(printed) == statuses(example.output)
    else:
        assert printed == example.output


def test_examples_are_found_on_every_page_that_has_them():
    pages = {example.page.name for example in EXAMPLES}
    assert {"README.md", "index.md", "verify.md", "per-sample.md", "lockstep.md", "contributing.md"} <= pages
    assert sum(example.output is not None for example in EXAMPLES) >= 3


def test_the_verify_page_names_every_property():
    import torchbp

    page = (ROOT / "docs" / "verify.md").read_text()
    for property_name in torchbp.VERIFY_PROPERTIES:
        assert f"`{property_name}`" in page


def test_every_page_is_in_the_site_navigation():
    navigation = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("**/*.md"):
        assert f": {page.relative_to(ROOT / 'docs')}" in navigation, page


def test_no_page_of_the_site_links_outside_the_site():
    """A link to ../torchbp/... works on GitHub and breaks on the site: the code is linked through the API reference."""
    for page in (ROOT / "docs").glob("**/*.md"):
        assert not re.findall(r"\]\(\.\./[^)]*\)", page.read_text()), page
