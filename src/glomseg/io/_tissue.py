"""Tissue or glass: which pixels of a slide hold stained tissue (:func:`tissue_pixels`).

The one rule every stage uses to tell tissue from background (white glass, black
padding): tile filtering counts it, training crops centre on it, stain
normalisers fit on it and prediction skips windows without it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["tissue_pixels"]


def tissue_pixels(image: NDArray[np.uint8], *, saturation_threshold: int = 40) -> NDArray[np.bool_]:
    """Which pixels of an RGB image are tissue: HSV saturation (0-255) above a threshold.

    The exact integer rule :func:`tile_stats` counts:
    ``255 * (max - min) > threshold * max`` over the three channels.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[[243, 241, 246], [200, 100, 150]]], dtype=np.uint8)
    >>> tissue_pixels(image).astype(int)
    array([[0, 1]])
    """
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    spread = (high - np.minimum(np.minimum(r, g), b)).astype(np.uint16)
    spread *= np.uint16(255)  # <= 65025: exact in uint16
    scaled = high.astype(np.uint16)
    scaled *= np.uint16(saturation_threshold)
    tissue: NDArray[np.bool_] = spread > scaled
    return tissue
