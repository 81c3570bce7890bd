"""Slides in the formats OpenSlide reads, behind :class:`glomseg.SlideReader`.

Vendor formats (Hamamatsu NDPI and VMS, 3DHISTECH MRXS, Leica SCN, Ventana BIF,
Aperio SVS, Philips TIFF, ...) and DICOM WSI open through OpenSlide
(``pip install 'glomseg[openslide]'``: the ``openslide-python`` binding and the
``openslide-bin`` wheel of the library, no system package needed). TIFFs keep
glomseg's own reader unless asked (``SlideReader(path, backend="openslide")``).

OpenSlide returns un-premultiplied RGBA; regions the file has no data for are
transparent and are composited over ``fill`` (white by default), as are
partly transparent edges. Reads go band by band of rows, so a large window
never needs more than one band of RGBA beside the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import SlideReadError
from glomseg.io._tiff_metadata import _finite_float, mean_pixel_size
from glomseg.io._window import Window

__all__ = [
    "INSTALL_HINT",
    "openslide_available",
    "openslide_format",
    "openslide_levels",
    "openslide_pixel_size",
    "openslide_tile_shape",
    "open_openslide",
    "read_openslide",
]

INSTALL_HINT = "pip install 'glomseg[openslide]'"

#: Rows of RGBA read from OpenSlide at a time (times the window's width).
_BAND_PIXELS = 8 * 2**20


def _module() -> Any:
    try:
        import openslide
    except ImportError:
        return None
    return openslide


def openslide_available() -> bool:
    """Whether the ``openslide`` extra (binding and library) is installed."""
    return _module() is not None


def openslide_format(path: Path) -> str | None:
    """The vendor OpenSlide recognises ``path`` as, or None (also when it is not installed)."""
    openslide = _module()
    if openslide is None:
        return None
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # the library's own errors on unreadable files
        return None
    return str(vendor) if vendor else None


def open_openslide(path: Path) -> Any:
    """``path`` opened with OpenSlide, else :class:`SlideReadError` naming the file and why."""
    openslide = _module()
    if openslide is None:
        raise SlideReadError(
            f"{path}: reading it through OpenSlide needs the openslide extra: {INSTALL_HINT}"
        )
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideReadError(f"{path}: not a slide format OpenSlide reads") from None
    except Exception as exc:  # OpenSlideError and OSError from the library
        raise SlideReadError(
            f"{path}: OpenSlide cannot open it ({type(exc).__name__}: {exc})"
        ) from None


def openslide_levels(handle: Any) -> list[tuple[int, int, float]]:
    """``(height, width, downsample)`` of each level, full resolution first."""
    return [
        (int(h), int(w), float(ds))
        for (w, h), ds in zip(handle.level_dimensions, handle.level_downsamples, strict=True)
    ]


def openslide_pixel_size(handle: Any, path: Path) -> float | None:
    """Micrometres per pixel from the vendor properties (``openslide.mpp-x``/``-y``), or None."""
    x = _finite_float(handle.properties.get("openslide.mpp-x"))
    y = _finite_float(handle.properties.get("openslide.mpp-y"))
    if x is None:  # one axis known: square pixels
        x = y
    if y is None:
        y = x
    if x is None or y is None:
        return None
    return mean_pixel_size(path, "OpenSlide mpp", x, y)


def openslide_tile_shape(handle: Any, height: int, width: int) -> tuple[int, int]:
    """The tile size OpenSlide reports for level 0, else 512 x 512 (capped by the slide)."""
    try:
        tile_h = int(handle.properties["openslide.level[0].tile-height"])
        tile_w = int(handle.properties["openslide.level[0].tile-width"])
    except (KeyError, ValueError):
        tile_h = tile_w = 512
    return (max(1, min(tile_h, height)), max(1, min(tile_w, width)))


def read_openslide(
    handle: Any,
    path: Path,
    level: int,
    downsample: float,
    window: Window,
    out: NDArray[np.uint8],
    fill: int,
) -> None:
    """Read ``window`` (in level ``level``'s pixels, inside it) into ``out`` as RGB."""
    rows = max(1, _BAND_PIXELS // max(1, window.width))
    for start in range(0, window.height, rows):
        height = min(rows, window.height - start)
        # OpenSlide places a region by its top-left corner in level-0 pixels.
        origin = (round(window.col * downsample), round((window.row + start) * downsample))
        try:
            region = handle.read_region(origin, level, (window.width, height))
        except Exception as exc:  # OpenSlideError: a corrupt or unreadable region
            raise SlideReadError(
                f"{path}: OpenSlide cannot read {window} of level {level} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        rgba = np.asarray(region, dtype=np.uint8)
        band = out[start : start + height]
        alpha = rgba[..., 3:4]
        if bool((alpha == 255).all()):
            band[...] = rgba[..., :3]
        else:  # no data (alpha 0) or a soft edge: over the fill colour
            mixed = rgba[..., :3].astype(np.uint16) * alpha + np.uint16(fill) * (255 - alpha)
            band[...] = ((mixed + 127) // 255).astype(np.uint8)
