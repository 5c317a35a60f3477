"""What every worked example of docs/derivation.md shares: the check that its three ways agree, and how it prints.

A way is a dict of named arrays. NumPy's holds the formula's intermediates too
(p, x̂, …); torchbp's and autograd's hold what the code computes, and each of
those must match NumPy's value of the same name.
"""

from __future__ import annotations

import numpy as np

AGREEMENT = 1e-12  # float64: the three ways differ by rounding only


def agree(ways: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """The largest difference from NumPy of each quantity torchbp and autograd compute;
    AssertionError beyond AGREEMENT."""
    numpy_way, *others = ways.values()
    names = list(others[0])
    differences = {
        name: max(float(np.abs(np.asarray(way[name]) - np.asarray(numpy_way[name])).max()) for way in others)
        for name in names
    }
    disagreeing = {name: d for name, d in differences.items() if not d <= AGREEMENT}
    if disagreeing:
        raise AssertionError(f"the three ways disagree beyond {AGREEMENT}: {disagreeing}")
    return differences


def agreement_table(differences: dict[str, float]) -> str:
    return "\n".join(
        [f"| quantity | NumPy, torchbp and autograd agree to {AGREEMENT:g} |", "|---|---|"]
        + [f"| {name} | {'yes' if d <= AGREEMENT else 'NO'} |" for name, d in differences.items()]
    )


def matrix(name: str, value) -> str:
    """A named matrix, one row a line; small entries in scientific notation, so that they keep their digits."""
    value = np.asarray(value)
    if value.ndim == 0:
        return f"{name} = {value:.6f}"
    small = 0 < np.abs(value).max() < 1e-2
    number = "{: .5e}" if small else "{: .6f}"
    rows = value.reshape(-1, value.shape[-1])
    shape = "×".join(map(str, value.shape))
    zero = number.format(0.0)  # what rounds to 0 prints as 0: the sign of a rounding error is no information
    return f"{name}  ({shape})\n" + "\n".join(
        "   " + "  ".join(zero if number.format(-abs(v)) == number.format(-0.0) else number.format(v) for v in row)
        for row in rows
    )
