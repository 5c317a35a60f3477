"""Experiments that train torchbp models beside their native twins."""
