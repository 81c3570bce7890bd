"""Tissue or glass: which pixels of a slide hold stained tissue (:func:`tissue_pixels`).

The one rule every stage uses to tell tissue from background (white glass, black
padding): tile filtering counts it, training crops centre on it, stain
normalisers fit on it and prediction skips windows without it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["tissue_pixels"]


#: Brightest channel below which a grey pixel is black padding, not tissue.
PADDING_LEVEL = 32


def _level(name: str, value: object) -> None:
    """Raise unless ``value`` is an integer grey level in ``[0, 255]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer in [0, 255], got {value!r}")
    if not 0 <= value <= 255:
        raise ValueError(f"{name} must be in [0, 255], got {value}")


def tissue_pixels(
    image: NDArray[np.uint8], *, saturation_threshold: int = 40, dark_threshold: int | None = None
) -> NDArray[np.bool_]:
    """Which pixels of an RGB image are tissue: HSV saturation (0-255) above a threshold.

    The exact integer rule :func:`glomseg.tiles.tile_stats` counts:
    ``255 * (max - min) > threshold * max`` over the three channels. With
    ``dark_threshold``, a pixel counts too when it absorbs light, whatever its
    colour: its darkest channel is at most ``dark_threshold`` (glass lets nearly
    all light through in every channel) and its brightest at least
    :data:`PADDING_LEVEL` (not black padding), so that greyscale scans and very
    pale stains are not taken for background.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[[243, 241, 246], [200, 100, 150]]], dtype=np.uint8)
    >>> tissue_pixels(image).astype(int)
    array([[0, 1]])
    >>> pixels = [[[245, 245, 245], [150, 150, 150], [236, 205, 230], [5, 5, 5]]]
    >>> glass_grey_pale_black = np.array(pixels, dtype=np.uint8)
    >>> tissue_pixels(glass_grey_pale_black).astype(int)
    array([[0, 0, 0, 0]])
    >>> tissue_pixels(glass_grey_pale_black, dark_threshold=215).astype(int)
    array([[0, 1, 1, 0]])

    Raises
    ------
    ValueError, TypeError
        If ``image`` is not ``uint8`` with 3 channels last, or a threshold is
        not an integer in ``[0, 255]`` (the message names it).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape[-1:] != (3,):
        got = (
            f"{image.dtype} of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"image must be uint8 RGB (..., 3), got {got}")
    _level("saturation_threshold", saturation_threshold)
    if dark_threshold is not None:
        _level("dark_threshold", dark_threshold)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    spread = (high - low).astype(np.uint16)
    spread *= np.uint16(255)  # <= 65025: exact in uint16
    scaled = high.astype(np.uint16)
    scaled *= np.uint16(saturation_threshold)
    tissue: NDArray[np.bool_] = spread > scaled
    if dark_threshold is not None:
        tissue |= (low <= dark_threshold) & (high >= PADDING_LEVEL)
    return tissue
