"""Masks as pyramidal OME-TIFF, for viewers such as QuPath and napari.

:func:`write_ome_tiff` streams a 2-D 0/1 mask (any array that slices like NumPy,
such as a zarr store) into a tiled, compressed OME-TIFF: level 0 is the mask at
full resolution as 0/255, and each further level (a SubIFD of level 0, as the
OME-TIFF pyramid convention has it) halves the one before, a pixel being 255
where any pixel of its block is, so that small objects stay visible when zoomed
out. The physical pixel size goes into the OME-XML. Memory stays at one band of
rows of the mask (``tile * 2**k`` rows for level ``k``, read in slices of
``tile`` rows), whatever the mask's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glomseg.io._files import atomic_path

__all__ = ["mask_tiles", "pyramid_shapes", "write_ome_tiff"]


def pyramid_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Shapes of the levels: halving (rounding up) until a level fits in one tile."""
    h, w = shape
    shapes = [(h, w)]
    while max(h, w) > tile:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        shapes.append((h, w))
    return shapes


def _level_rows(mask: Any, factor: int, start: int, stop: int, step: int) -> NDArray[np.uint8]:
    """Rows ``start:stop`` of the mask reduced by ``factor`` (any pixel of a block), 0/255."""
    width = mask.shape[1]
    out_width = math.ceil(width / factor)
    out = np.zeros((stop - start, out_width), dtype=np.uint8)
    for row in range(start, stop, step):  # ``step`` output rows from each slice of the mask
        rows = min(step, stop - row)
        block = np.asarray(mask[row * factor : (row + rows) * factor]) != 0
        if factor > 1:
            padded = np.zeros((rows * factor, out_width * factor), dtype=bool)
            padded[: block.shape[0], :width] = block
            block = padded.reshape(rows, factor, out_width, factor).any(axis=(1, 3))
        out[row - start : row - start + rows] = block * np.uint8(255)
    return out


def mask_tiles(
    mask: Any, shape: tuple[int, int], factor: int, tile: int
) -> Iterator[NDArray[np.uint8]]:
    """The 0/255 tiles of ``mask`` reduced by ``factor`` (to ``shape``), row by row of tiles."""
    h, w = shape
    step = max(1, tile // factor)
    for r in range(0, h, tile):
        band = _level_rows(mask, factor, r, min(r + tile, h), step)
        for c in range(0, w, tile):
            block = np.zeros((tile, tile), dtype=np.uint8)
            part = band[:, c : c + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def write_ome_tiff(
    mask: Any,
    path: Path,
    *,
    pixel_size_um: float | None,
    pyramid: bool = True,
    tile: int = 512,
    compression: str | None = "zlib",
    name: str | None = None,
) -> Path:
    """Write the 2-D ``mask`` as a tiled (pyramidal) OME-TIFF at ``path``, atomically."""
    import tifffile

    h, w = mask.shape
    shapes = pyramid_shapes((h, w), tile) if pyramid else [(h, w)]
    metadata: dict[str, Any] = {"axes": "YX", "Name": name or path.name}
    if pixel_size_um is not None:
        metadata.update(
            PhysicalSizeX=pixel_size_um,
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=pixel_size_um,
            PhysicalSizeYUnit="µm",
        )
    options: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "compression": compression,
        "photometric": "minisblack",
    }
    with (
        atomic_path(path, clean=True) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=h * w > 2**31, ome=True) as writer,
    ):
        writer.write(
            mask_tiles(mask, shapes[0], 1, tile),
            shape=shapes[0],
            subifds=len(shapes) - 1,
            metadata=metadata,
            **options,
        )
        for level, shape in enumerate(shapes[1:], start=1):
            writer.write(
                mask_tiles(mask, shape, 2**level, tile),
                shape=shape,
                subfiletype=1,
                metadata=None,
                **options,
            )
    return path
