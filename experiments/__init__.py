"""Experiments that train torchbp models beside their native twins.

One file per experiment: ``seed.py``, ``xor.py``, ``spiral.py``, ``digits.py``, ``digits_cnn.py``,
``digits_layernorm.py``, ``digits_resnet.py``, ``gpt.py``, each registering itself; ``python -m experiments``
(``__main__.py``) runs them.
What they run in and share is in ``lab/``; the benchmark is ``bench/``, the derivation's worked
examples ``derivation/``.
"""
