"""A thumbnail of a slide with its predicted mask and its annotations drawn on it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from glomseg.annotations._rasterize import MaskRasterizer
from glomseg.evaluate._evaluate import _rasterizer
from glomseg.io._files import atomic_path
from glomseg.io._reader import SlideReader
from glomseg.predict._slide_mask import MaskLike, _as_mask, _mask_shape, _sample_mask

if TYPE_CHECKING:
    pass

__all__ = ["write_overlay"]


def _outline(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    from scipy.ndimage import binary_erosion

    edge: NDArray[np.bool_] = mask & ~binary_erosion(mask, border_value=0)
    return edge


def write_overlay(
    path: str | os.PathLike[str],
    slide: SlideReader | str | os.PathLike[str] | NDArray[np.uint8],
    prediction: MaskLike,
    *,
    downsample: float = 16,
    truth: str | os.PathLike[str] | MaskRasterizer | Iterable[object] | None = None,
    color: tuple[int, int, int] = (0, 200, 0),
    truth_color: tuple[int, int, int] = (30, 60, 255),
    alpha: float = 0.35,
) -> Path:
    """Write a PNG thumbnail of a slide with the predicted mask and, optionally, the truth.

    The prediction is tinted in ``color`` with its outline drawn solid; the
    truth polygons are outlined in ``truth_color``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.png`` to write (atomically).
    slide : SlideReader, path or numpy.ndarray
        The slide, read whole at ``downsample`` (this decodes the whole slide
        unless it has a pyramid), or an RGB thumbnail already made; the masks are
        sampled to its size.
    prediction : SlideMask, path or numpy.ndarray
        The full-resolution predicted mask.
    downsample : float
        Thumbnail downsample factor when ``slide`` is a reader or path.
    truth : path, MaskRasterizer or iterable of geometries, optional
        Annotation polygons to outline.
    color, truth_color : (int, int, int)
        RGB colours of the prediction and the truth.
    alpha : float
        Opacity of the prediction tint, in ``[0, 1]``.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> rgb = np.full((40, 60, 3), 255, dtype=np.uint8)
    >>> mask = np.zeros((40, 60), dtype=bool)
    >>> mask[10:30, 10:30] = True
    >>> out = write_overlay(getfixture("tmp_path") / "o.png", rgb, mask)
    >>> with Image.open(out) as png:
    ...     png.size
    (60, 40)
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    mask = _as_mask(prediction)
    shape = _mask_shape(mask)
    if isinstance(slide, np.ndarray):
        thumb = np.asarray(slide)
        if thumb.dtype != np.uint8 or thumb.ndim != 3 or thumb.shape[2] != 3:
            raise ValueError(
                f"a thumbnail must be uint8 (h, w, 3), got {thumb.dtype} {thumb.shape}"
            )
    elif isinstance(slide, SlideReader):
        thumb = slide.read(downsample=downsample)
    else:
        with SlideReader(slide) as reader:
            thumb = reader.read(downsample=downsample)
    th, tw = thumb.shape[:2]
    scale = (shape[0] / th, shape[1] / tw)
    image = thumb.astype(np.float32)
    predicted = _sample_mask(mask, (th, tw))
    tint = np.asarray(color, dtype=np.float32)
    image[predicted] = (1 - alpha) * image[predicted] + alpha * tint
    image[_outline(predicted)] = tint
    if truth is not None:
        rasterizer = _rasterizer(truth)
        drawn = rasterizer.rasterize(shape, downsample=(scale[0] + scale[1]) / 2)
        if drawn.shape != (th, tw):
            fixed = np.zeros((th, tw), dtype=np.bool_)
            rh, rw = min(th, drawn.shape[0]), min(tw, drawn.shape[1])
            fixed[:rh, :rw] = drawn[:rh, :rw]
            drawn = fixed
        image[_outline(drawn)] = np.asarray(truth_color, dtype=np.float32)
    out = Path(path)
    with atomic_path(out, clean=True) as tmp:
        Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return out
