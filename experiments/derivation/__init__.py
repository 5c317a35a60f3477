"""The derivation of docs/derivation.md: its worked example (explain), NumPy reference and figures."""
