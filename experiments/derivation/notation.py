"""The symbols of docs/derivation.md: the table it states once, and the checks that keep every chapter to it.

The document states its symbols in one table, under the heading ``## The symbols``.
``problems(document)`` reads that table back and lists, chapter by chapter, what
breaks it: a symbol of the table that no chapter uses, σ written for a standard
deviation or a variance, an accent on a letter it does not mark, or a symbol
the table has retired (RETIRED: each with what the document writes instead).
tests/test_derivation_doc.py asserts that the list is empty, and that a planted
violation of each kind is reported.
"""

from __future__ import annotations

import re
import unicodedata

HEADING = "## The symbols"

# a retired symbol: (what it meant, the pattern that finds it, what the document writes instead)
RETIRED = [
    ("the target as q", r"(?<![A-Za-z_\\])q(?![A-Za-z])", "y"),
    ("a layer's output as y, its gradient ∂J/∂y", r"∂J/∂y(?!\u0302)|\\partial y\b", "a, p or O, and g = ∂J/∂a"),
    ("the stride's s as a scale", r"\bs = (?:1/√|g\b)", "1/√E in attention, λ in cross-entropy"),
    ("s as a column index", r"x_\{?rs\b", "u and v, an input's row and column"),
    ("m as the momentum", r"\(1 [−-] m\)", "momentum, spelled out"),
    ("ε as label smoothing", r"\(1 [−-] (?:ε|\\epsilon)\)", "α"),
    ("D as a pooling window's count", r"D_\{?hw\b", "M_hw"),
    ("S as the number of keys", r"\(S × E\)", "L′"),
    ("V as the vocabulary's size", r"\(V × D\)", "words: a row per token"),
]

# σ written as a standard deviation or a variance: σ², σ_n, σ̄, \sigma^2, \bar\sigma, "through σ"
NOT_THE_SIGMOID = re.compile(r"σ(?:[²_^\u0300-\u036f₀-₉]|\s*\^)|\\sigma\s*[\^_]|\\bar\s*\\sigma|through σ(?![('′])")

# each accent marks one letter and one meaning: a hat the prediction ŷ, a tilde the normalised input x̃
ACCENTS = {"\u0302": ("y", "hat"), "\u0303": ("x", "tilde")}
LATEX_ACCENT = re.compile(r"\\(hat|tilde|bar|check|breve|dot|vec)\s*\{?\s*(\w)")


def chapters(document: str) -> list[tuple[str, str]]:
    """(heading, text) of each '## ' section; the text before the first heading as its own."""
    parts = re.split(r"^(## .*)$", document, flags=re.MULTILINE)
    return [("(the introduction)", parts[0]), *zip(parts[1::2], parts[2::2])]


def table(document: str) -> list[tuple[str, str]]:
    """(symbol, meaning) of each row of the symbols table; a cell of several symbols gives a row each."""
    (text,) = [text for heading, text in chapters(document) if heading == HEADING]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", text, flags=re.MULTILINE)  # the header's too, not the rule's
    return [(symbol, meaning) for cell, meaning in rows[1:] for symbol in cell.split(", ")]


def used(symbol: str, text: str) -> bool:
    """Does ``symbol`` occur in ``text`` as itself, not as part of a longer word?"""
    return re.search(rf"(?<![^\W\d_]){re.escape(symbol)}(?![^\W\d_])", text) is not None


def problems(document: str) -> list[str]:
    """What breaks the symbols table, one line per problem, each naming its chapter."""
    headings = [heading for heading, _ in chapters(document)]
    if headings.count(HEADING) != 1:
        return [f"the document should state its symbols once, under {HEADING!r}: found {headings.count(HEADING)}"]
    found = []
    rest = "".join(text for heading, text in chapters(document) if heading != HEADING)
    for symbol, meaning in table(document):
        if not used(unicodedata.normalize("NFC", symbol), unicodedata.normalize("NFC", rest)):
            found.append(f"the table's {symbol} ({meaning}) is used in no chapter")
    for heading, text in chapters(document):
        if heading == HEADING:
            continue
        for match in NOT_THE_SIGMOID.finditer(text):
            found.append(f"{heading}: σ is the sigmoid alone, not a standard deviation or a variance: {match[0]!r}")
        decomposed = unicodedata.normalize("NFD", text)
        for i, character in enumerate(decomposed):
            if unicodedata.combining(character) and ACCENTS.get(character, ("",))[0] != decomposed[i - 1]:
                letter = unicodedata.normalize("NFC", decomposed[i - 1 : i + 1])
                found.append(f"{heading}: {letter!r}: {accents_meaning()}")
        for match in LATEX_ACCENT.finditer(text):
            if (match[2], match[1]) not in ACCENTS.values():
                found.append(f"{heading}: {match[0]!r}: {accents_meaning()}")
        for name, pattern, instead in RETIRED:
            for match in re.finditer(pattern, unicodedata.normalize("NFC", text)):
                found.append(f"{heading}: {name} is retired ({match[0]!r}); the document writes {instead}")
    return found


def accents_meaning() -> str:
    return "an accent marks one letter: " + ", ".join(f"a {name} only {letter}" for letter, name in ACCENTS.values())
