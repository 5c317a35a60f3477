"""A small diverging heat map as an RGB image, for TensorBoard's image tab."""

from __future__ import annotations

import numpy as np


def heat_map(values: np.ndarray, cell: int = 24) -> np.ndarray:
    """Render a 2-D array as an (H, W, 3) uint8 image: red positive, blue negative, white zero.

    The colour scale is symmetric around zero and set by the largest |value|,
    so cells compare by colour within one image. A one-pixel grey grid
    separates the cells.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = np.abs(values).max() or 1.0
    t = np.clip(values / scale, -1.0, 1.0)
    red = np.where(t < 0, 1 + t, 1.0)
    green = 1 - np.abs(t)
    blue = np.where(t > 0, 1 - t, 1.0)
    rgb = np.stack([red, green, blue], axis=-1)
    image = np.kron(rgb, np.ones((cell, cell, 1)))
    image[::cell, :, :] = 0.6
    image[:, ::cell, :] = 0.6
    return (image * 255).round().astype(np.uint8)
