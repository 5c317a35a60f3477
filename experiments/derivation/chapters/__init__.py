"""The chapters of docs/derivation.md after the 2-3-1 network: one more layer each, one file per layer.

Each chapter module has the same parts: ``three_ways()`` (its worked example,
computed by NumPy, torchbp and autograd and checked to agree), ``blocks(numbers)``
(the document's generated blocks, by name), ``TITLES`` (their headings in a
terminal) and ``CODE`` (its rows of the "Where each formula lives" table).
"""

from experiments.derivation.chapters import (
    attention,
    batch_norm,
    conv2d,
    cross_entropy,
    embedding,
    gelu,
    layer_norm,
    pooling,
    softmax,
)

CHAPTERS = (cross_entropy, layer_norm, conv2d, softmax, attention, gelu, embedding, batch_norm, pooling)
