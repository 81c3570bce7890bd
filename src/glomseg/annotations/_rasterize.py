"""Polygons to masks and back.

:class:`MaskRasterizer` burns polygons into boolean masks of any window of a
slide, at full resolution or a downsample; :func:`mask_to_polygons` and
:func:`mask_to_annotations` turn a mask (or a window of one) back into polygons
in slide coordinates.

Conventions
-----------
This is the one place where GeoJSON's ``(x, y) = (col, row)`` meets array
``(row, col)`` indices.

*Pixel-centre rule.* At full resolution, pixel ``(row, col)`` has its centre at
``(x, y) = (col, row)`` and covers ``[col - 0.5, col + 0.5] x [row - 0.5, row + 0.5]``.
A pixel is inside a polygon when its centre lies inside the polygon or on its
boundary, exactly as :func:`skimage.draw.polygon` decides (so a square with
corners ``(1, 1)`` and ``(3, 3)`` covers the 3 x 3 pixels 1..3). Centres within
``1e-7`` pixel of the boundary count as on it (see :data:`BOUNDARY_TOLERANCE`).
With ``all_touched=True`` every pixel whose square the polygon touches is inside.

*Downsampling.* A window read at ``downsample=d`` has
``max(1, round(h / d))`` by ``max(1, round(w / d))`` pixels, like
:meth:`glomseg.SlideReader.read`; each output pixel covers a block of
full-resolution pixels and is inside when the centre of its block is.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon

from glomseg.annotations._annotations import (
    GLOMERULUS_COLOR,
    Annotation,
    PolygonalGeometry,
    as_polygonal,
)
from glomseg.annotations._rle import _check_mask
from glomseg.io._window import Window

__all__ = [
    "BOUNDARY_TOLERANCE",
    "DEFAULT_SPECK_AREA",
    "MaskRasterizer",
    "mask_to_annotations",
    "mask_to_polygons",
]

#: Serialises GDAL rasterization, which is not thread-safe.
_GDAL_LOCK = threading.Lock()

logger = logging.getLogger(__name__)

BOUNDARY_TOLERANCE: float = 1e-7
"""Pixel centres this close (in full-resolution pixels) to a polygon's boundary count as on it.

GDAL's scanline fill (used through :func:`rasterio.features.rasterize`) leaves
centres that lie exactly on some edges out; growing each polygon by this much
makes every on-boundary centre inside, as in :func:`skimage.draw.polygon`. For
polygons with integer vertices (the HuBMAP files) no pixel centre lies closer to
an edge than 1 / (edge length) without lying on it, so the rule is exact there.
"""

DEFAULT_SPECK_AREA: float = 64.0
"""Default ``min_area`` of :func:`mask_to_polygons`, in square full-resolution pixels.

Regions smaller than an 8 x 8 pixel square (4 pixels at a 4x downsample) are
specks: a glomerulus at full resolution covers ~10^4 to 10^5 square pixels.
"""

#: Output pixels rasterized at once by :meth:`MaskRasterizer.full_mask`.
_BAND_PIXELS = 1 << 24


def _output_shape(window: Window, downsample: float) -> tuple[int, int]:
    if isinstance(downsample, bool) or not (
        isinstance(downsample, int | float) and math.isfinite(downsample) and downsample > 0
    ):
        raise ValueError(f"downsample must be a finite number > 0, got {downsample!r}")
    if downsample == 1:
        return window.shape
    return (max(1, round(window.height / downsample)), max(1, round(window.width / downsample)))


def _as_window(target: Window | tuple[int, int], name: str = "target") -> Window:
    if isinstance(target, Window):
        return target
    if (
        isinstance(target, tuple | list)
        and len(target) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in target)
    ):
        if min(target) <= 0:
            raise ValueError(f"{name} shape must be 2 positive integers, got {tuple(target)!r}")
        return Window(0, 0, int(target[0]), int(target[1]))
    raise TypeError(f"{name} must be a glomseg.Window or a (height, width) tuple, got {target!r}")


class _Grid:
    """Output pixel grid of a window at a downsample: the affine map to slide coordinates."""

    def __init__(self, window: Window, downsample: float) -> None:
        self.window = window
        self.shape = _output_shape(window, downsample)
        # Size of one output pixel in full-resolution pixels, per axis.
        self.step_row = window.height / self.shape[0]
        self.step_col = window.width / self.shape[1]
        # Raster coordinate (X, Y) -> slide x = x0 + X * step_col, y = y0 + Y * step_row.
        # Pixel C spans X in [C, C + 1], so its centre X = C + 0.5 maps to
        # col + C * step + (step - 1) / 2: the centre of its block of full-res pixels.
        self.x0 = window.col - 0.5
        self.y0 = window.row - 0.5

    def transform(self, row_start: int = 0) -> Any:
        from affine import Affine

        return Affine(
            self.step_col, 0.0, self.x0, 0.0, self.step_row, self.y0 + row_start * self.step_row
        )

    def footprint(self, row_start: int = 0, row_stop: int | None = None) -> Polygon:
        stop = self.shape[0] if row_stop is None else row_stop
        return shapely.box(
            self.x0,
            self.y0 + row_start * self.step_row,
            self.x0 + self.shape[1] * self.step_col,
            self.y0 + stop * self.step_row,
        )


class MaskRasterizer:
    """Burn polygons into boolean masks, window by window.

    The polygons live in a spatial index (:class:`shapely.STRtree`), so
    rasterizing a window costs time in proportion to the window and the
    polygons that touch it, not to the whole slide.

    Parameters
    ----------
    geometries : iterable
        :class:`glomseg.annotations.Annotation` objects, shapely Polygons or MultiPolygons,
        GeoJSON geometry or Feature dicts, or anything with ``__geo_interface__``,
        in full-resolution slide pixels with ``(x, y) = (col, row)``. Invalid
        geometries are repaired with :func:`shapely.make_valid`. Filter
        annotations by class before, e.g.
        ``MaskRasterizer(a for a in annotations if a.classification == "glomerulus")``.

    Raises
    ------
    AnnotationError
        If an item is not polygonal.

    Notes
    -----
    See the module notes for the pixel-centre rule and the downsample grid.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> r = MaskRasterizer([box(1, 1, 3, 3)])
    >>> r.rasterize((5, 5)).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    >>> from glomseg import Window
    >>> r.rasterize(Window(2, 2, 2, 3)).astype(int)
    array([[1, 1, 0],
           [1, 1, 0]])
    >>> MaskRasterizer([box(0, 0, 3, 3)]).rasterize((6, 6), downsample=2).astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 0]])
    """

    def __init__(self, geometries: Iterable[object]) -> None:
        shapes = [as_polygonal(g) for g in geometries]
        self._geometries: tuple[PolygonalGeometry, ...] = tuple(shapes)
        array = np.empty(len(shapes), dtype=object)
        array[:] = shapes
        # Grow each polygon by the boundary tolerance: on-boundary centres count as inside.
        # GEOS may divide by ~0 on near-degenerate vertices; its result is checked below.
        with np.errstate(all="ignore"):
            grown = shapely.buffer(array, BOUNDARY_TOLERANCE, join_style="mitre", mitre_limit=5.0)
        bad = shapely.is_empty(grown) | ~shapely.is_valid(grown) | ~shapely.covers(grown, array)
        grown[bad] = array[bad]
        self._burn: NDArray[np.object_] = grown
        self._tree = shapely.STRtree(self._burn)
        logger.debug("MaskRasterizer indexed %d geometries", len(shapes))

    def __len__(self) -> int:
        return len(self._geometries)

    def __repr__(self) -> str:
        return f"MaskRasterizer(<{len(self)} geometries>)"

    @property
    def geometries(self) -> tuple[PolygonalGeometry, ...]:
        """The polygons, as given (after repair), in slide coordinates."""
        return self._geometries

    def query(self, target: Window | tuple[int, int], *, downsample: float = 1) -> NDArray[np.intp]:
        """Indices of the polygons that touch a window.

        Parameters
        ----------
        target : Window or (height, width)
            Region in full-resolution slide pixels (a shape means a window at ``(0, 0)``).
        downsample : float
            As in :meth:`rasterize`; it only rounds the window's footprint.

        Returns
        -------
        numpy.ndarray
            Sorted indices into :attr:`geometries`.

        Examples
        --------
        >>> from shapely.geometry import box
        >>> from glomseg import Window
        >>> r = MaskRasterizer([box(0, 0, 10, 10), box(100, 100, 120, 120)])
        >>> r.query(Window(90, 90, 20, 20)).tolist(), r.count_in(Window(0, 0, 200, 200))
        ([1], 2)
        """
        grid = _Grid(_as_window(target), downsample)
        return self._query(grid, 0, grid.shape[0])

    def count_in(self, target: Window | tuple[int, int], *, downsample: float = 1) -> int:
        """Number of polygons that touch a window (see :meth:`query`)."""
        return len(self.query(target, downsample=downsample))

    def _query(self, grid: _Grid, row_start: int, row_stop: int) -> NDArray[np.intp]:
        if not len(self._geometries):
            return np.empty(0, dtype=np.intp)
        hits = self._tree.query(grid.footprint(row_start, row_stop), predicate="intersects")
        return np.sort(np.asarray(hits, dtype=np.intp))

    def _burn_into(
        self, out: NDArray[np.bool_], grid: _Grid, row_start: int, all_touched: bool
    ) -> None:
        """Rasterize into ``out`` (rows ``row_start:`` of ``grid``), which must be zeroed."""
        indices = self._query(grid, row_start, row_start + out.shape[0])
        if not len(indices):
            return
        from rasterio.features import rasterize

        shapes = [(g, 1) for g in self._burn[indices]]
        # GDAL's rasterizer and its in-memory datasets are not safe to use from several
        # threads at once (seen as spurious NotGeoreferencedWarnings): one at a time.
        with _GDAL_LOCK:
            rasterize(
                shapes,
                out=out.view(np.uint8),
                transform=grid.transform(row_start),
                all_touched=all_touched,
            )

    def rasterize(
        self,
        target: Window | tuple[int, int],
        *,
        downsample: float = 1,
        all_touched: bool = False,
    ) -> NDArray[np.bool_]:
        """Rasterize the polygons into a window.

        Parameters
        ----------
        target : Window or (height, width)
            Region in full-resolution slide pixels; a shape means the window at
            ``(0, 0)``, i.e. a whole slide. The window may reach outside the slide.
        downsample : float
            Output pixels per full-resolution pixel, inverted: the output has
            ``max(1, round(h / downsample))`` by ``max(1, round(w / downsample))``
            pixels, matching :meth:`glomseg.SlideReader.read`. Default 1.
        all_touched : bool
            Burn every pixel whose square the polygon touches, instead of the
            pixel-centre rule.

        Returns
        -------
        numpy.ndarray of bool
            The mask, C-contiguous.

        Examples
        --------
        >>> from shapely.geometry import Polygon
        >>> r = MaskRasterizer([Polygon([(0.7, 0.7), (1.3, 0.7), (1.3, 1.2)])])
        >>> int(r.rasterize((3, 3)).sum()), r.rasterize((3, 3), all_touched=True).astype(int)
        (0, array([[0, 0, 0],
               [0, 1, 0],
               [0, 0, 0]]))
        """
        grid = _Grid(_as_window(target), downsample)
        out = np.zeros(grid.shape, dtype=np.bool_)
        self._burn_into(out, grid, 0, bool(all_touched))
        return out

    def full_mask(
        self,
        shape: tuple[int, int],
        *,
        downsample: float = 1,
        all_touched: bool = False,
    ) -> NDArray[np.bool_]:
        """Rasterize a whole slide of ``shape`` into one mask, band by band of rows.

        Same result as ``rasterize(shape, ...)``, but the rasterizer's own
        temporaries stay the size of one band (about 16 M pixels), so the peak
        memory is the output (one byte a pixel) plus a band.

        Parameters
        ----------
        shape : (height, width)
            The slide size in full-resolution pixels.
        downsample, all_touched
            As in :meth:`rasterize`.

        Returns
        -------
        numpy.ndarray of bool

        Examples
        --------
        >>> from shapely.geometry import box
        >>> MaskRasterizer([box(0, 0, 2, 1)]).full_mask((3, 4)).astype(int)
        array([[1, 1, 1, 0],
               [1, 1, 1, 0],
               [0, 0, 0, 0]])
        """
        grid = _Grid(_as_window(shape, "shape"), downsample)
        out = np.zeros(grid.shape, dtype=np.bool_)
        band = max(1, _BAND_PIXELS // grid.shape[1])
        for start in range(0, grid.shape[0], band):
            self._burn_into(out[start : start + band], grid, start, bool(all_touched))
        return out


# -- mask to polygons ----------------------------------------------------------------


def mask_to_polygons(
    mask: NDArray[Any],
    *,
    offset: tuple[int, int] | Window = (0, 0),
    downsample: float | None = None,
    min_area: float = DEFAULT_SPECK_AREA,
) -> list[Polygon]:
    """Trace the regions of a mask as polygons in slide coordinates.

    Each 4-connected region of nonzero pixels becomes one polygon (with holes)
    that follows the pixel edges, so rasterizing the polygons again at the same
    window and downsample gives back exactly the mask (less dropped specks).

    Parameters
    ----------
    mask : numpy.ndarray
        2-D bool (or integer, nonzero = inside) mask.
    offset : (row, col) or Window
        Where the mask lies in the slide. A ``(row, col)`` offset puts
        ``mask[0, 0]`` at that full-resolution pixel. A :class:`glomseg.Window` is
        the full-resolution region the mask covers; the scale per axis is then
        ``window.height / mask.shape[0]`` and ``window.width / mask.shape[1]``
        (the inverse of :meth:`MaskRasterizer.rasterize`).
    downsample : float, optional
        Full-resolution pixels per mask pixel, with a ``(row, col)`` offset;
        default 1. Not allowed with a window.
    min_area : float
        Regions smaller than this (square full-resolution pixels) are dropped.
        Default :data:`DEFAULT_SPECK_AREA` (64).

    Returns
    -------
    list of shapely.Polygon
        In GeoJSON ``(x, y) = (col, row)`` slide coordinates, edges on pixel
        boundaries (half-integers at full resolution), in raster-scan order.

    Raises
    ------
    TypeError
        If the mask is not bool or integer.
    ValueError
        If the mask is not 2-D, or ``downsample`` is given with a window.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 5), dtype=bool)
    >>> m[1:3, 1:4] = True
    >>> [p.bounds for p in mask_to_polygons(m, min_area=0)]
    [(0.5, 0.5, 3.5, 2.5)]
    >>> [p.bounds for p in mask_to_polygons(m, offset=(100, 200), downsample=2, min_area=0)]
    [(201.5, 101.5, 207.5, 105.5)]
    >>> mask_to_polygons(m)  # 6 pixels: a speck below min_area
    []
    """
    array = _check_mask(mask)
    if isinstance(offset, Window):
        if downsample is not None:
            raise ValueError("give downsample only with a (row, col) offset, not with a Window")
        if 0 in array.shape:
            return []
        window = offset
        step_row, step_col = window.height / array.shape[0], window.width / array.shape[1]
    else:
        if (
            not isinstance(offset, tuple | list)
            or len(offset) != 2
            or not all(isinstance(v, int | np.integer) for v in offset)
        ):
            raise TypeError(
                f"offset must be a (row, col) tuple of ints or a Window, got {offset!r}"
            )
        d = 1.0 if downsample is None else downsample
        if isinstance(d, bool) or not (isinstance(d, int | float) and math.isfinite(d) and d > 0):
            raise ValueError(f"downsample must be a finite number > 0, got {downsample!r}")
        if 0 in array.shape:
            return []
        window = Window(int(offset[0]), int(offset[1]), 1, 1)
        step_row = step_col = float(d)
    if not (isinstance(min_area, int | float) and min_area >= 0):
        raise ValueError(f"min_area must be a number >= 0, got {min_area!r}")

    from affine import Affine
    from rasterio.features import shapes

    binary = array if array.dtype == np.bool_ else array != 0
    if not binary.any():
        return []
    transform = Affine(step_col, 0.0, window.col - 0.5, 0.0, step_row, window.row - 0.5)
    source = np.ascontiguousarray(binary).view(np.uint8)
    polygons: list[Polygon] = []
    dropped = 0
    for geojson, _value in shapes(source, mask=binary, connectivity=4, transform=transform):
        shape = shapely.geometry.shape(geojson)
        if not shape.is_valid:
            shape = as_polygonal(shape)
        parts = list(shape.geoms) if isinstance(shape, MultiPolygon) else [shape]
        for part in parts:
            if part.area >= min_area and part.area > 0:
                polygons.append(part)
            else:
                dropped += 1
    if dropped:
        logger.debug("mask_to_polygons dropped %d specks below min_area=%g", dropped, min_area)
    return polygons


def mask_to_annotations(
    mask: NDArray[Any],
    *,
    offset: tuple[int, int] | Window = (0, 0),
    downsample: float | None = None,
    min_area: float = DEFAULT_SPECK_AREA,
    classification: str | None = "glomerulus",
    color: int | None = GLOMERULUS_COLOR,
    id: str | None = "PathAnnotationObject",
) -> list[Annotation]:
    """Trace a mask as :class:`~glomseg.annotations.Annotation` objects, ready for QuPath JSON.

    Parameters
    ----------
    mask, offset, downsample, min_area
        As in :func:`mask_to_polygons`.
    classification : str or None
        Class name of every annotation; default ``"glomerulus"``.
    color : int or None
        QuPath ``colorRGB``; default the HuBMAP files' glomerulus colour.
    id : str or None
        Feature ``id``; default ``"PathAnnotationObject"``, as QuPath writes.

    Returns
    -------
    list of Annotation

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((20, 20), dtype=bool)
    >>> m[2:12, 5:15] = True
    >>> [(a.classification, a.geometry.area) for a in mask_to_annotations(m)]
    [('glomerulus', 100.0)]
    """
    polygons = mask_to_polygons(mask, offset=offset, downsample=downsample, min_area=min_area)
    return [
        Annotation(p, classification=classification, color=color, properties={}, id=id)
        for p in polygons
    ]
