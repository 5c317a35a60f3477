"""The benchmark, python -m experiments.bench: its cases, paired timing and peak memory in a fresh process."""
