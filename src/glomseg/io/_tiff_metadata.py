"""Pixel size (micrometres per pixel) from the metadata TIFF writers leave.

Read, in this order, from OME-XML, an Aperio ImageDescription, ImageJ metadata and
the TIFF resolution tags; see :attr:`glomseg.SlideReader.pixel_size_um`.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import tifffile

__all__: list[str] = []

logger = logging.getLogger(__name__)

#: Pixel sizes above this from plain TIFF resolution tags are the dots-per-inch defaults of
#: image software (72 dpi is 353 um a pixel, 300 dpi 85 um), not a microscope's: unknown.
_MAX_TAG_PIXEL_SIZE_UM = 10.0
#: Micrometres per unit of OME ``PhysicalSize*Unit`` values.
_OME_UNITS = {
    "µm": 1.0,
    "\u03bcm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "pm": 1e-6,
    "Å": 1e-4,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _finite_float(text: object) -> float | None:
    """``text`` as a finite positive float, else ``None``."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _ome_pixel_size(xml: str) -> tuple[float | None, float | None]:
    """``(x, y)`` µm of the first image's ``Pixels`` in OME-XML (``None`` where absent)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return (None, None)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return (None, None)
    sizes = []
    for axis in ("X", "Y"):
        value = _finite_float(pixels.get(f"PhysicalSize{axis}"))
        scale = _OME_UNITS.get(pixels.get(f"PhysicalSize{axis}Unit", "µm").strip())
        sizes.append(None if value is None or scale is None else value * scale)
    return (sizes[0], sizes[1])


def _resolution_size(page: Any, per_unit: float | None) -> tuple[float | None, float | None]:
    """``(x, y)`` µm from a page's X/YResolution (pixels per unit of ``per_unit`` µm)."""
    if per_unit is None:
        return (None, None)
    sizes = []
    for tag in ("XResolution", "YResolution"):
        value = page.tags.get(tag)
        if value is None:
            return (None, None)
        number = value.value
        ratio = number[0] / number[1] if isinstance(number, tuple) and number[1] else number
        pixels = _finite_float(ratio)
        sizes.append(None if pixels is None else per_unit / pixels)
    return (sizes[0], sizes[1])


def _incomplete(found: tuple[str, float | None, float | None] | None) -> bool:
    """Whether a source gave no pixel size, or one of its two axes only."""
    return found is None or found[1] is None or found[2] is None


def find_pixel_size(tif: tifffile.TiffFile, page: Any, path: Path) -> float | None:
    """The full-resolution pixel size in µm of ``page``, the first page of ``tif``, or ``None``.

    Warns (``UserWarning``, ``stacklevel`` for :attr:`SlideReader.pixel_size_um`'s
    caller) when the two axes differ by more than 1 % and returns their mean.
    """
    found: tuple[str, float | None, float | None] | None = None
    if tif.is_ome and tif.ome_metadata:
        found = ("OME-XML", *_ome_pixel_size(tif.ome_metadata))
    ome = found
    if _incomplete(found) and str(page.description).startswith("Aperio"):
        match = re.search(r"\bMPP\s*=\s*([-+0-9.eE]+)", page.description)
        if match:
            mpp = _finite_float(match.group(1))
            found = ("Aperio MPP", mpp, mpp)
    if _incomplete(found) and tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", "")).strip()
        if unit in ("um", "micron", "microns", "\u00b5m", "\\u00B5m"):
            found = ("ImageJ", *_resolution_size(page, 1.0))
    if _incomplete(found) and ome is not None:
        side = ome[2] if ome[1] is None else ome[1]
        if side is not None:  # OME-XML states one side only: square pixels, as scanners make
            logger.info("%s: OME-XML states one pixel side, %g um: square pixels", path, side)
            found = ("OME-XML", side, side)
    if found is None or _incomplete(found):
        unit_tag = page.tags.get("ResolutionUnit")
        code = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
        per_unit = {2: 25400.0, 3: 10000.0}.get(code)
        found = ("TIFF resolution tags", *_resolution_size(page, per_unit))
    source, x, y = found
    if x is None or y is None:
        return None
    if source == "TIFF resolution tags" and max(x, y) > _MAX_TAG_PIXEL_SIZE_UM:
        logger.info(
            "%s: ignoring the resolution tags (%g um a pixel: a dpi default, not a scan)",
            path,
            max(x, y),
        )
        return None
    size = mean_pixel_size(path, source, x, y)
    logger.debug("%s: pixel size %g um from %s", path, size, source)
    return size


def mean_pixel_size(path: Path, source: str, x: float, y: float) -> float:
    """The mean of the two axes' pixel sizes, warning when they differ by more than 1 %.

    The ``UserWarning``'s ``stacklevel`` is for :attr:`SlideReader.pixel_size_um`'s
    caller, two calls up from the reader's own lookup.
    """
    if abs(x - y) > 0.01 * max(x, y):
        warnings.warn(
            f"{path}: pixel width {x:g} um and height {y:g} um differ by more than "
            f"1 % ({source}); using their mean {(x + y) / 2:g} um",
            UserWarning,
            stacklevel=4,
        )
    return (x + y) / 2
