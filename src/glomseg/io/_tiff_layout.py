"""Where a TIFF keeps a slide's pixels: pages, planes, segments and resolution levels.

:func:`find_levels` turns tifffile's series into :class:`Level` objects (one per
resolution, each a tuple of :class:`Plane` pages and a colour model) and refuses
layouts that cannot be read as one RGB image; :func:`check_segments` checks the
offset and byte-count tables against the file before any pixel is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from glomseg.errors import SlideReadError
from glomseg.io._tiff_color import JPEG_COMPRESSIONS, ColorModel, page_color, stacked_color
from glomseg.io._window import Window

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__: list[str] = []

#: Series that are never a pyramid level: slide labels, macro photos, thumbnails.
_NOT_LEVELS = frozenset({"thumbnail", "label", "macro", "map", "overview"})
_NOT_LEVEL_KINDS = frozenset({"ndpi_macro", "svs_label", "svs_macro"})
#: What a stack axis of tifffile's series means, for messages.
_AXIS_NAMES = {
    "Z": "Z (depth: a z-stack)",
    "T": "T (time: a time series)",
    "C": "C (channels)",
    "I": "I (a sequence of unknown meaning)",
    "Q": "Q (an axis of unknown meaning)",
    "E": "E (wavelength)",
    "R": "R (tiles)",
    "L": "L (exposures)",
    "V": "V (views)",
    "P": "P (phases)",
    "A": "A (angles)",
    "H": "H (histogram)",
}
#: Stack axes whose three pages are taken as R, G and B.
_COLOR_AXES = frozenset("CIQS")


class Plane:
    """One TIFF page (IFD) that contributes ``samples`` channels to a level."""

    def __init__(self, page: Any, name: str) -> None:
        key = page.keyframe
        self.page = page
        self.name = name
        if key.imagedepth != 1:
            raise SlideReadError(
                f"{name}: unsupported layout: volumetric pages (depth {key.imagedepth})"
            )
        self.height: int = key.imagelength
        self.width: int = key.imagewidth
        if self.height < 1 or self.width < 1:
            raise SlideReadError(f"{name}: the page is empty ({self.height} x {self.width} pixels)")
        self.dtype = np.dtype(key.dtype)
        self.samples: int = key.samplesperpixel
        self.separate = key.planarconfig == 2 and self.samples > 1
        if key.is_tiled:
            seg_h, seg_w = int(key.tilelength), int(key.tilewidth)
        else:
            seg_h, seg_w = min(int(key.rowsperstrip), self.height), self.width
        if seg_h < 1 or seg_w < 1:
            raise SlideReadError(f"{name}: corrupt tags: segments of {seg_h} x {seg_w} pixels")
        self.seg_h: int = seg_h
        self.seg_w: int = seg_w
        self.n_rows: int = math.ceil(self.height / seg_h)
        self.n_cols: int = math.ceil(self.width / seg_w)
        _check_codec(key, name)
        self.decode = key.decode
        self.decode_args: dict[str, Any] = {}
        if key.compression in JPEG_COMPRESSIONS:
            self.decode_args = {"jpegtables": page.jpegtables, "jpegheader": key.jpegheader}
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.bytecounts = np.asarray(page.databytecounts, dtype=np.int64)
        planes = self.samples if self.separate else 1
        expected = planes * self.n_rows * self.n_cols
        if self.offsets.size < expected or self.bytecounts.size < expected:
            listed = min(self.offsets.size, self.bytecounts.size)
            raise SlideReadError(
                f"{name}: corrupt tags: the page lists {listed} segments, its size needs {expected}"
            )
        self.offsets = self.offsets[:expected]
        self.bytecounts = self.bytecounts[:expected]
        #: Segments without data (byte count 0), or ``None`` when there are none.
        self.missing: NDArray[np.bool_] | None = None
        self.nodata = key.nodata
        self.compression = key.compression
        self.tiled = bool(key.is_tiled)

    @property
    def segment_kind(self) -> str:
        return "tile" if self.tiled else "strip"

    def segment_index(self, plane: int, seg_row: int, seg_col: int) -> int:
        return (plane * self.n_rows + seg_row) * self.n_cols + seg_col

    def segment_window(self, seg_row: int, seg_col: int) -> Window:
        r0, c0 = seg_row * self.seg_h, seg_col * self.seg_w
        return Window.from_bounds(
            r0, c0, min(r0 + self.seg_h, self.height), min(c0 + self.seg_w, self.width)
        )

    def window_of(self, index: int) -> Window:
        """The pixels of segment ``index`` (of any sample plane)."""
        return self.segment_window(*divmod(index % (self.n_rows * self.n_cols), self.n_cols))


#: CCITT codecs, which tifffile calls by name from imagecodecs.
_CCITT = {2: "ccittrle_decode", 3: "ccittfax3_decode", 4: "ccittfax4_decode"}


def _check_codec(key: Any, name: str) -> None:
    """Refuse a compression or predictor that no installed decoder reads."""
    compression, predictor = int(key.compression), int(key.predictor)
    if compression == 1 or compression in tifffile.TIFF.DECOMPRESSORS:
        known = True
    elif compression in _CCITT:
        import imagecodecs

        known = hasattr(imagecodecs, _CCITT[compression])
    else:
        known = False
    if not known:
        try:
            codec = f"{tifffile.COMPRESSION(compression).name} ({compression})"
        except ValueError:
            codec = f"unknown ({compression})"
        raise SlideReadError(
            f"{name}: unsupported compression {codec}: no installed decoder reads it"
        )
    if (
        predictor != 1
        and predictor not in tifffile.TIFF.UNPREDICTORS
        and compression not in tifffile.TIFF.IMAGE_COMPRESSIONS
    ):
        raise SlideReadError(f"{name}: unsupported predictor {predictor}")


@dataclass(frozen=True)
class Level:
    """One resolution level: its size, downsample, the pages holding its channels, its colours."""

    height: int
    width: int
    downsample: float
    planes: tuple[Plane, ...]
    color: ColorModel

    @property
    def channels(self) -> int:
        return sum(p.samples for p in self.planes)

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = self.planes[0].dtype
        return dtype


def find_levels(tif: tifffile.TiffFile, name: str) -> tuple[list[Level], str]:
    """The resolution levels of a TIFF, full resolution first, and a one-line layout."""
    if not tif.series:
        raise SlideReadError(f"{name}: the TIFF holds no image")
    base = tif.series[0]
    base_planes = _series_planes(base, name)
    height, width = base_planes[0].height, base_planes[0].width
    notes = []
    if sum(p.samples for p in base_planes) == 1:
        # One series per colour (GDAL shows these as subdatasets).
        extra = []
        for series in tif.series[1:]:
            try:
                planes = _series_planes(series, name)
            except SlideReadError:
                continue
            if (
                len(planes) == 1
                and planes[0].samples == 1
                and (planes[0].height, planes[0].width) == (height, width)
                and planes[0].dtype == base_planes[0].dtype
            ):
                extra.append(planes[0])
        if len(extra) == 2:
            planes = (*base_planes, *extra)
            color = stacked_color([p.page for p in planes], [p.name for p in planes])
            notes.append("one series per channel")
            return _finish([Level(height, width, 1.0, planes, color)], notes, name)
        if extra:
            raise SlideReadError(
                f"{name}: unsupported layout: {len(extra) + 1} same-size grey series; glomseg "
                "reads one image, or three grey series as R, G, B"
            )
    levels = [Level(height, width, 1.0, base_planes, _planes_color(base_planes))]
    candidates = list(base.levels[1:])
    if not candidates:
        # Reduced-resolution images stored as separate series of the same aspect.
        candidates = [s for s in tif.series[1:] if _may_be_level(s)]
    for series in candidates:
        try:
            planes = _series_planes(series, name)
            color = _planes_color(planes)
        except SlideReadError:
            continue
        h, w = planes[0].height, planes[0].width
        if color.kind != levels[0].color.kind or color.channels != levels[0].color.channels:
            continue
        if h >= height:
            continue
        ds_row, ds_col = height / h, width / w
        if abs(ds_row - ds_col) / ds_col > 0.02:
            continue
        levels.append(Level(h, w, (ds_row + ds_col) / 2, planes, color))
    levels.sort(key=lambda level: level.downsample)
    return _finish(levels, notes, name)


def _may_be_level(series: Any) -> bool:
    """Whether a series may be a reduced-resolution copy (not a label, macro or thumbnail)."""
    return (
        str(series.name).strip().lower() not in _NOT_LEVELS and series.kind not in _NOT_LEVEL_KINDS
    )


def _planes_color(planes: tuple[Plane, ...]) -> ColorModel:
    if len(planes) == 1:
        return page_color(planes[0].page, planes[0].name)
    return stacked_color([p.page for p in planes], [p.name for p in planes])


def _finish(levels: list[Level], notes: list[str], name: str) -> tuple[list[Level], str]:
    first = levels[0].planes[0]
    channels = levels[0].channels
    kind = "tiled" if first.tiled else "striped"
    size = f"{first.seg_h}x{first.seg_w}"
    try:
        codec = tifffile.COMPRESSION(first.compression).name
    except ValueError:
        codec = f"compression {first.compression}"
    if len(levels[0].planes) > 1:
        arrangement = f"{len(levels[0].planes)} pages"
    elif first.separate:
        arrangement = "planar"
    else:
        arrangement = "interleaved"
    parts = [f"{kind} {size}", codec, f"{channels} x {first.dtype} {arrangement}"]
    described = levels[0].color.describe()
    if described:
        parts.append(described)
    parts += notes
    if len(levels) > 1:
        parts.append(f"{len(levels)} levels")
    return levels, ", ".join(parts)


def _series_planes(series: Any, name: str) -> tuple[Plane, ...]:
    pages = list(series.pages)
    if not pages or any(p is None for p in pages):
        raise SlideReadError(f"{name}: corrupt file: series {series.index} has missing pages")
    if len(pages) > 1:
        _check_stack(series, len(pages), name)
    planes = tuple(
        Plane(p, name if len(pages) == 1 and p.index == 0 else f"{name} (page {p.index})")
        for p in pages
    )
    shapes = {(p.height, p.width) for p in planes}
    if len(shapes) != 1:
        raise SlideReadError(f"{name}: pages of one series differ in size: {sorted(shapes)}")
    dtypes = {p.dtype for p in planes}
    if len(dtypes) != 1:
        raise SlideReadError(f"{name}: pages of one series differ in pixel type: {dtypes}")
    return planes


def _check_stack(series: Any, count: int, name: str) -> None:
    """Refuse a series of several pages unless they are three colours."""
    try:
        axes, shape = series.get_axes(False), series.get_shape(False)
    except Exception:  # metadata of corrupt files
        axes, shape = "I", (count,)
    stack = [(a, int(n)) for a, n in zip(axes, shape, strict=False) if a not in "YXS" and n > 1]
    if len(stack) == 1 and stack[0][0] in _COLOR_AXES and stack[0][1] == 3 == count:
        return
    along = ", ".join(f"{n} along {_AXIS_NAMES.get(a, a)}" for a, n in stack) or "unknown axes"
    raise SlideReadError(
        f"{name}: unsupported layout: the image is a stack of {count} same-size pages "
        f"({along}); glomseg reads one page, or three grey pages as R, G, B "
        "(save the plane you want as its own TIFF)"
    )


def check_segments(levels: list[Level], tif: tifffile.TiffFile, name: str) -> None:
    """Check every level's offset and byte-count tables against the file.

    A segment (tile or strip) with byte count 0 is missing: it is recorded in
    ``Plane.missing`` and read as background. A segment whose offset points into
    the file header, or whose data runs past the end of the file, raises.
    """
    size = tif.filehandle.size
    header = 16 if tif.is_bigtiff else 8
    for level in levels:
        for plane in level.planes:
            offsets, counts = plane.offsets, plane.bytecounts
            bad = np.flatnonzero((counts < 0) | ((counts > 0) & (offsets < header)))
            if bad.size:
                i = int(bad[0])
                raise SlideReadError(
                    f"{name}: corrupt offset table: {plane.segment_kind} {i} of {plane.name} "
                    f"has offset {int(offsets[i])} and byte count {int(counts[i])} "
                    f"({bad.size} such {plane.segment_kind}s)"
                )
            ends = offsets + counts
            if ends.size and int(ends.max()) > size:
                i = int(np.argmax(ends))
                raise SlideReadError(
                    f"{name}: truncated file (or a corrupt offset table): {plane.segment_kind} "
                    f"{i} of {plane.name} runs to byte {int(ends[i])}, the file has {size} bytes"
                )
            missing = counts == 0
            plane.missing = missing if missing.any() else None
