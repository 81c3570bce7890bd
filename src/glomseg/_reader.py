"""Windowed, memory-bounded reading of whole-slide TIFFs of any HuBMAP layout.

A :class:`SlideReader` decodes only the tiles or strips a window touches, straight
from the TIFF segments (tifffile's decoders, no whole-level reads), and keeps a
small least-recently-used cache of decoded segments so that overlapping windows
read in raster order decode each segment about once.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tifffile

from glomseg._window import Window
from glomseg.errors import SlideReadError, WindowError, look_up_option

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["SlideReader"]

logger = logging.getLogger(__name__)

Boundary = Literal["pad", "error"]

_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}
_PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
#: Bytes of encoded segments read from the file at once.
_READ_BYTES = 32 * 2**20
#: Bytes of float32 pixels averaged at once by a resampled read.
_BAND_BYTES = 32 * 2**20


class _Plane:
    """One TIFF page (IFD) that contributes ``channels`` channels to a level."""

    def __init__(self, page: Any, name: str) -> None:
        key = page.keyframe
        self.page = page
        self.name = name
        if key.imagedepth != 1:
            raise SlideReadError(
                f"{name}: volumetric pages (depth {key.imagedepth}) are not supported"
            )
        self.height: int = key.imagelength
        self.width: int = key.imagewidth
        self.dtype = np.dtype(key.dtype)
        self.samples: int = key.samplesperpixel
        self.separate = key.planarconfig == 2 and self.samples > 1
        if key.is_tiled:
            seg_h, seg_w = int(key.tilelength), int(key.tilewidth)
        else:
            seg_h, seg_w = min(int(key.rowsperstrip), self.height), self.width
        self.seg_h: int = seg_h
        self.seg_w: int = seg_w
        self.n_rows: int = math.ceil(self.height / seg_h)
        self.n_cols: int = math.ceil(self.width / seg_w)
        self.decode = key.decode
        self.decode_args: dict[str, Any] = {}
        if key.compression in _JPEG_COMPRESSIONS:
            self.decode_args = {"jpegtables": page.jpegtables, "jpegheader": key.jpegheader}
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.bytecounts = np.asarray(page.databytecounts, dtype=np.int64)
        planes = self.samples if self.separate else 1
        expected = planes * self.n_rows * self.n_cols
        if self.offsets.size < expected:
            raise SlideReadError(
                f"{name}: the page lists {self.offsets.size} segments, its size needs {expected}"
            )
        self.nodata = key.nodata
        self.compression = key.compression
        self.tiled = bool(key.is_tiled)

    def segment_index(self, plane: int, seg_row: int, seg_col: int) -> int:
        return (plane * self.n_rows + seg_row) * self.n_cols + seg_col

    def segment_window(self, seg_row: int, seg_col: int) -> Window:
        r0, c0 = seg_row * self.seg_h, seg_col * self.seg_w
        return Window.from_bounds(
            r0, c0, min(r0 + self.seg_h, self.height), min(c0 + self.seg_w, self.width)
        )

    def data_end(self) -> int:
        if self.offsets.size == 0:
            return 0
        return int((self.offsets + self.bytecounts).max())


@dataclass(frozen=True)
class _Level:
    """One resolution level: its size, downsample and the pages holding its channels."""

    height: int
    width: int
    downsample: float
    planes: tuple[_Plane, ...]

    @property
    def channels(self) -> int:
        return sum(p.samples for p in self.planes)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.planes[0].dtype


class _SegmentCache:
    """A byte-bounded LRU cache of decoded segments, safe across threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple[int, int], NDArray[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> NDArray[Any] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, int], value: NDArray[Any]) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.nbytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


class SlideReader:
    """Read windows of a whole-slide image as ``uint8`` RGB, without decoding the whole slide.

    Opens any of the HuBMAP TIFF layouts lazily: interleaved ``(H, W, 3)``,
    planar ``(3, H, W)`` in one page, one page per colour (also OME
    ``(1, 1, 3, H, W)``), or one series per colour (what GDAL shows as
    subdatasets); tiled or striped; uncompressed, LZW, deflate, JPEG or any
    other codec tifffile decodes; classic TIFF or BigTIFF; with pyramid levels
    (OME SubIFDs, or reduced-resolution series) where present. Plain JPEG/PNG
    images open too; they are decoded whole on first read, so use them only for
    small images.

    Reading decodes only the tiles or strips that a window touches. Decoded
    segments go to an LRU cache bounded by ``cache_bytes``, so overlapping
    windows read in raster order decode each segment about once, even in
    striped files whose strips span the whole width. Memory is therefore
    O(window + ``cache_bytes``), independent of the slide size; pass
    ``cache_bytes=0`` for strictly O(window).

    Pixel values are converted to ``uint8`` RGB:

    - 1 channel (grayscale) is repeated into R, G and B; 2 channels are
      grayscale + alpha, 4 channels are RGBA: alpha is composited over white
      (the colour of empty glass).
    - Unsigned integers are scaled by ``255 / max`` of their type (``uint16``
      ``65535 -> 255``), rounding to nearest; signed integers are clipped to
      ``[0, max]`` and scaled likewise; floats are taken as ``[0, 1]`` and
      clipped; booleans map to 0 and 255.
    - More than 4 channels, or several planes of another kind (a z-stack or
      time series), raise :class:`~glomseg.SlideReadError`.

    Parameters
    ----------
    path : str or os.PathLike
        The slide file.
    cache_bytes : int, optional
        Upper bound for the decoded-segment cache, default 512 MiB.
    max_workers : int, optional
        Threads decoding segments of one window in parallel (the codecs
        release the GIL). Default: ``min(4, os.cpu_count())``.

    Raises
    ------
    SlideReadError
        If the file is missing, not a TIFF or image, truncated, corrupt, or of
        an unsupported layout. The message names the file.

    Notes
    -----
    A reader is picklable: a copy in another process reopens the file by path,
    so one reader can be handed to a process pool. Inside one process it is
    safe to share between threads.

    Examples
    --------
    >>> import numpy as np, tifffile
    >>> from glomseg import SlideReader, Window
    >>> path = getfixture("tmp_path") / "tiny.tif"
    >>> rgb = np.arange(64 * 48 * 3, dtype=np.uint8).reshape(64, 48, 3)
    >>> tifffile.imwrite(path, rgb, tile=(16, 16))
    >>> with SlideReader(path) as slide:
    ...     print(slide.shape, slide.level_count)
    ...     window = slide.read(Window(10, 20, height=4, width=5))
    (64, 48) 1
    >>> window.shape, window.dtype, bool((window == rgb[10:14, 20:25]).all())
    ((4, 5, 3), dtype('uint8'), True)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_bytes: int = 512 * 2**20,
        max_workers: int | None = None,
    ) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._path = Path(path)
        self._cache_bytes = cache_bytes
        self._max_workers = max_workers or min(4, os.cpu_count() or 1)
        self._cache = _SegmentCache(cache_bytes)
        self._tif: tifffile.TiffFile | None = None
        self._image: NDArray[Any] | None = None
        self._levels: list[_Level] = []
        self._layout = ""
        self._lock = threading.RLock()
        self._pixel_size: float | None = None
        self._pixel_size_read = False
        self._open()

    # -- opening ----------------------------------------------------------
    def _open(self) -> None:
        path = self._path
        if not path.exists():
            raise SlideReadError(f"{path}: no such file")
        if path.is_dir():
            raise SlideReadError(f"{path}: is a directory, not a slide file")
        if path.suffix.lower() in _PLAIN_IMAGE_SUFFIXES:
            self._open_plain_image()
            return
        try:
            tif = tifffile.TiffFile(path)
        except tifffile.TiffFileError as exc:
            raise SlideReadError(f"{path}: not a readable TIFF file ({exc})") from exc
        except (OSError, ValueError, IndexError, KeyError) as exc:
            raise SlideReadError(f"{path}: cannot open as TIFF ({exc})") from exc
        self._tif = tif
        tif.filehandle.set_lock(True)
        try:
            self._levels = self._find_levels(tif)
            self._check_complete(tif)
        except SlideReadError:
            tif.close()
            raise
        except Exception as exc:  # tifffile raises many kinds on corrupt headers
            tif.close()
            raise SlideReadError(f"{path}: corrupt or unsupported TIFF ({exc})") from exc

    def _open_plain_image(self) -> None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self._path) as image:
                width, height = image.size
                mode = image.mode
        except (UnidentifiedImageError, OSError) as exc:
            raise SlideReadError(f"{self._path}: not a readable image file ({exc})") from exc
        self._levels = [_Level(height, width, 1.0, ())]
        self._layout = f"plain image ({mode}), decoded whole on first read"

    def _find_levels(self, tif: tifffile.TiffFile) -> list[_Level]:
        name = str(self._path)
        if not tif.series:
            raise SlideReadError(f"{name}: the TIFF holds no image")
        base = tif.series[0]
        base_planes = self._series_planes(base, name)
        height, width = base_planes[0].height, base_planes[0].width
        levels = [_Level(height, width, 1.0, base_planes)]
        notes = []
        if sum(p.samples for p in base_planes) == 1:
            # One series per colour (GDAL shows these as subdatasets).
            extra = []
            for series in tif.series[1:]:
                planes = self._series_planes(series, name)
                if (
                    len(planes) == 1
                    and planes[0].samples == 1
                    and (planes[0].height, planes[0].width) == (height, width)
                    and planes[0].dtype == base_planes[0].dtype
                ):
                    extra.append(planes[0])
            if len(extra) in (2, 3):
                levels = [_Level(height, width, 1.0, (*base_planes, *extra))]
                notes.append("one series per channel")
                return self._finish_levels(levels, notes)
        candidates = list(base.levels[1:])
        if not candidates:
            # Reduced-resolution images stored as separate series of the same aspect.
            candidates = [
                s for s in tif.series[1:] if s.kind not in ("ndpi_macro", "svs_label", "svs_macro")
            ]
        for series in candidates:
            try:
                planes = self._series_planes(series, name)
            except SlideReadError:
                continue
            h, w = planes[0].height, planes[0].width
            if sum(p.samples for p in planes) != levels[0].channels or h >= height:
                continue
            ds_row, ds_col = height / h, width / w
            if abs(ds_row - ds_col) / ds_col > 0.02:
                continue
            levels.append(_Level(h, w, (ds_row + ds_col) / 2, planes))
        levels.sort(key=lambda level: level.downsample)
        return self._finish_levels(levels, notes)

    def _finish_levels(self, levels: list[_Level], notes: list[str]) -> list[_Level]:
        first = levels[0].planes[0]
        channels = levels[0].channels
        if channels > 4:
            raise SlideReadError(
                f"{self._path}: unsupported layout: {channels} channels "
                "(expected 1 grayscale, 2 grayscale+alpha, 3 RGB or 4 RGBA)"
            )
        if first.dtype.kind not in "uifb":
            raise SlideReadError(f"{self._path}: unsupported pixel type {first.dtype}")
        kind = "tiled" if first.tiled else "striped"
        size = f"{first.seg_h}x{first.seg_w}"
        codec = tifffile.COMPRESSION(first.compression).name
        if len(levels[0].planes) > 1:
            arrangement = f"{len(levels[0].planes)} pages"
        elif first.separate:
            arrangement = "planar"
        else:
            arrangement = "interleaved"
        parts = [f"{kind} {size}", codec, f"{channels} x {first.dtype} {arrangement}"]
        parts += notes
        if len(levels) > 1:
            parts.append(f"{len(levels)} levels")
        self._layout = ", ".join(parts)
        return levels

    @staticmethod
    def _series_planes(series: Any, name: str) -> tuple[_Plane, ...]:
        pages = [p for p in series.pages]
        if not pages or any(p is None for p in pages):
            raise SlideReadError(f"{name}: series {series.index} has missing pages")
        planes = tuple(_Plane(p, name) for p in pages)
        shapes = {(p.height, p.width) for p in planes}
        if len(shapes) != 1:
            raise SlideReadError(f"{name}: pages of one series differ in size: {sorted(shapes)}")
        dtypes = {p.dtype for p in planes}
        if len(dtypes) != 1:
            raise SlideReadError(f"{name}: pages of one series differ in pixel type: {dtypes}")
        return planes

    def _check_complete(self, tif: tifffile.TiffFile) -> None:
        size = tif.filehandle.size
        for level in self._levels:
            for plane in level.planes:
                end = plane.data_end()
                if end > size:
                    raise SlideReadError(
                        f"{self._path}: truncated file: image data runs to byte {end}, "
                        f"the file has {size} bytes"
                    )

    # -- properties -------------------------------------------------------
    @property
    def path(self) -> Path:
        """The slide file."""
        return self._path

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the full-resolution level, in pixels."""
        return (self._levels[0].height, self._levels[0].width)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The pixel type stored in the file (reads always return ``uint8``)."""
        if self._levels[0].planes:
            return self._levels[0].dtype
        return self._load_plain().dtype

    @property
    def channels(self) -> int:
        """Number of channels stored in the file (reads always return 3)."""
        if self._levels[0].planes:
            return self._levels[0].channels
        image = self._load_plain()
        return 1 if image.ndim == 2 else int(image.shape[2])

    @property
    def level_count(self) -> int:
        """Number of resolution levels (1 when the file has no pyramid)."""
        return len(self._levels)

    @property
    def level_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(height, width)`` of each level, full resolution first."""
        return tuple((lv.height, lv.width) for lv in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level relative to full resolution."""
        return tuple(lv.downsample for lv in self._levels)

    @property
    def segment_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the tiles or strips the full-resolution level is stored in.

        Strips span the whole width. A plain image counts as one segment.
        """
        if not self._levels[0].planes:
            return self.shape
        first = self._levels[0].planes[0]
        return (first.seg_h, first.seg_w)

    @property
    def cache_bytes(self) -> int:
        """The bound of the decoded-segment cache, in bytes."""
        return self._cache_bytes

    @property
    def layout(self) -> str:
        """A one-line description of how the file stores its pixels."""
        return self._layout

    @property
    def pixel_size_um(self) -> float | None:
        """The full-resolution pixel size in micrometres per pixel, or ``None`` if unknown.

        Read, in this order, from OME-XML ``PhysicalSizeX``/``PhysicalSizeY``
        (with their units, default µm), an Aperio ImageDescription's
        ``MPP = ...``, ImageJ metadata with ``unit=um`` (or micron), and the
        TIFF ``XResolution``/``YResolution`` tags with ``ResolutionUnit`` inch
        or centimetre (unit "none" means unknown, and so does a pixel over
        10 um from these tags: that is an image program's dots-per-inch default,
        such as 72 dpi, not a scan). Plain JPEG/PNG images give ``None``. When
        the two axes differ by more than 1 % a ``UserWarning`` naming the file
        is emitted and their mean is returned.

        Examples
        --------
        >>> import numpy as np, tifffile
        >>> from glomseg import SlideReader
        >>> path = getfixture("tmp_path") / "scanned.tif"
        >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8)
        >>> tifffile.imwrite(path, rgb, resolution=(20000, 20000), resolutionunit="CENTIMETER")
        >>> with SlideReader(path) as slide:
        ...     print(slide.pixel_size_um)  # 20000 pixels per cm
        0.5
        """
        if not self._levels:
            raise SlideReadError(f"{self._path}: the reader is closed")
        if not self._pixel_size_read:
            self._pixel_size = self._find_pixel_size()
            self._pixel_size_read = True
        return self._pixel_size

    def _find_pixel_size(self) -> float | None:
        tif = self._tif
        if tif is None or not self._levels[0].planes:
            return None
        page = self._levels[0].planes[0].page
        found: tuple[str, float | None, float | None] | None = None
        if tif.is_ome and tif.ome_metadata:
            found = ("OME-XML", *_ome_pixel_size(tif.ome_metadata))
        if (found is None or found[1] is None) and str(page.description).startswith("Aperio"):
            match = re.search(r"\bMPP\s*=\s*([-+0-9.eE]+)", page.description)
            if match:
                mpp = _finite_float(match.group(1))
                found = ("Aperio MPP", mpp, mpp)
        if (found is None or found[1] is None) and tif.is_imagej:
            unit = str((tif.imagej_metadata or {}).get("unit", "")).strip()
            if unit in ("um", "micron", "microns", "\u00b5m", "\\u00B5m"):
                found = ("ImageJ", *_resolution_size(page, 1.0))
        if found is None or found[1] is None:
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
                self._path,
                max(x, y),
            )
            return None
        if abs(x - y) > 0.01 * max(x, y):
            warnings.warn(
                f"{self._path}: pixel width {x:g} um and height {y:g} um differ by more than "
                f"1 % ({source}); using their mean {(x + y) / 2:g} um",
                UserWarning,
                stacklevel=3,
            )
        size = (x + y) / 2
        logger.debug("%s: pixel size %g um from %s", self._path, size, source)
        return size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._tif is None and self._image is None and not self._levels

    def __repr__(self) -> str:
        h, w = self.shape if self._levels else (0, 0)
        return f"SlideReader({str(self._path)!r}, shape=({h}, {w}), layout={self._layout!r})"

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Close the file and drop the cache. Further reads raise :class:`SlideReadError`."""
        if self._tif is not None:
            self._tif.close()
        self._tif = None
        self._image = None
        self._levels = []
        self._cache.clear()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self._path,
            "cache_bytes": self._cache_bytes,
            "max_workers": self._max_workers,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"], cache_bytes=state["cache_bytes"], max_workers=state["max_workers"]
        )

    # -- reading ----------------------------------------------------------
    def read(
        self,
        window: Window | None = None,
        *,
        out_shape: tuple[int, int] | None = None,
        downsample: float | None = None,
        boundary: Boundary = "pad",
        fill: int = 255,
    ) -> NDArray[np.uint8]:
        """Read a window as ``uint8`` RGB of shape ``(h, w, 3)``.

        Parameters
        ----------
        window : Window, optional
            The region in full-resolution pixel coordinates; default the whole
            slide (mind the memory: use ``downsample`` for a whole-slide view).
        out_shape : (int, int), optional
            Resample the window to this ``(height, width)``.
        downsample : float, optional
            Resample the window by this factor (> 0): the output is
            ``max(1, round(h / downsample))`` by ``max(1, round(w / downsample))``.
            Give at most one of ``out_shape`` and ``downsample``.
        boundary : {"pad", "error"}
            What to do with a window partly outside the slide: ``"pad"`` fills
            the outside part with ``fill``; ``"error"`` raises. A window wholly
            outside the slide always raises.
        fill : int
            The value, 0-255, of padded pixels; default 255, white like glass.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``(h, w, 3)`` (or ``out_shape + (3,)``).

        Raises
        ------
        WindowError
            If the window lies wholly outside the slide, or partly with
            ``boundary="error"``, or if the output shape is invalid.
        SlideReadError
            If the file is closed or its data is corrupt.

        Notes
        -----
        A resampled read averages pixel areas (a box filter of any factor, whole
        or fractional, like OpenCV's ``INTER_AREA``). It reads from the coarsest
        pyramid level whose downsample does not exceed the requested one, band
        by band of rows, so memory stays bounded by the output plus one band
        (32 MiB) whatever the window's size. Without a pyramid the result equals
        the exact area average of the full-resolution window up to rounding; from
        a pyramid level it averages the level's pixels over the window's exact
        (fractional) footprint, so the difference is the file writer's own
        resampling, which agrees within a few grey levels (the tests hold it to a mean absolute
        difference of at most 3).
        """
        if not self._levels:
            raise SlideReadError(f"{self._path}: the reader is closed")
        look_up_option("boundary", boundary, ("pad", "error"))
        if not 0 <= fill <= 255:
            raise ValueError(f"fill must be in 0..255, got {fill}")
        if window is None:
            window = Window.from_shape(self.shape)
        elif not isinstance(window, Window):
            raise TypeError(f"window must be a glomseg.Window, got {type(window).__name__}")
        inside = window.clip(self.shape)
        if inside is None:
            raise WindowError(f"{self._path}: window {window} lies outside the slide {self.shape}")
        if inside != window and boundary == "error":
            raise WindowError(
                f"{self._path}: window {window} extends outside the slide {self.shape}"
            )
        target = self._target_shape(window, out_shape, downsample)
        if target == window.shape:
            if inside == window:  # every pixel is overwritten
                out = np.empty((*window.shape, 3), dtype=np.uint8)
            else:
                out = np.full((*window.shape, 3), fill, dtype=np.uint8)
            self._read_level(0, inside, out[inside.relative_to(window).to_slices()])
            return out
        return self._read_resampled(window, inside, target, fill)

    def _target_shape(
        self, window: Window, out_shape: tuple[int, int] | None, downsample: float | None
    ) -> tuple[int, int]:
        if out_shape is not None and downsample is not None:
            raise ValueError("give at most one of out_shape and downsample")
        if downsample is not None:
            if not downsample > 0:
                raise ValueError(f"downsample must be > 0, got {downsample!r}")
            return (
                max(1, round(window.height / downsample)),
                max(1, round(window.width / downsample)),
            )
        if out_shape is not None:
            if len(out_shape) != 2 or min(out_shape) <= 0:
                raise WindowError(f"out_shape must be 2 positive integers, got {out_shape!r}")
            return (int(out_shape[0]), int(out_shape[1]))
        return window.shape

    def _read_resampled(
        self, window: Window, inside: Window, target: tuple[int, int], fill: int
    ) -> NDArray[np.uint8]:
        wanted = min(window.height / target[0], window.width / target[1])
        level_index = self._level_for(wanted)
        level = self._levels[level_index]
        # The window in the level's pixel grid (the part outside the slide kept as margin).
        if level_index:
            lw = window.downsample(level.downsample)
            lin = inside.downsample(level.downsample).clip((level.height, level.width))
            assert lin is not None
        else:
            lw, lin = window, inside
        # The requested window's exact (fractional) span inside the level window.
        ds = level.downsample
        rows = _area_matrix(
            lw.height, target[0], window.row / ds - lw.row, window.row_stop / ds - lw.row
        )
        cols = _area_matrix(
            lw.width, target[1], window.col / ds - lw.col, window.col_stop / ds - lw.col
        )
        return _area_average(self._level_reader(level_index), lw, lin, rows, cols, fill)

    def _read_area(
        self, rows: NDArray[np.float64], cols: NDArray[np.float64], *, fill: int = 255
    ) -> NDArray[np.uint8]:
        """Area-average the slide over the cells of a rectilinear grid of fractional edges.

        ``rows`` and ``cols`` are increasing cell edges in full-resolution pixels
        (``n + 1`` each); the result is ``uint8`` of shape ``(len(rows) - 1,
        len(cols) - 1, 3)``, each pixel the exact area average of its cell, with
        pixels outside the slide counting as ``fill``. It reads from the coarsest
        pyramid level whose downsample does not exceed the cells' height, like
        :meth:`read`. From full resolution a cell's value does not depend on the
        other cells asked for (see :func:`_grid_average`).
        """
        if not self._levels:
            raise SlideReadError(f"{self._path}: the reader is closed")
        wanted = float(rows[-1] - rows[0]) / max(1, len(rows) - 1)
        level_index = self._level_for(wanted)
        level = self._levels[level_index]
        if level_index:
            rows, cols = rows / level.downsample, cols / level.downsample
        read = self._level_reader(level_index)
        return _grid_average(read, (level.height, level.width), rows, cols, fill)

    def _level_for(self, wanted: float) -> int:
        """The coarsest level whose downsample does not exceed ``wanted`` (0 if none)."""
        level_index = 0
        for i, level in enumerate(self._levels):
            if level.downsample <= wanted * (1 + 1e-3):
                level_index = i
        return level_index

    def _level_reader(self, level_index: int) -> Callable[[Window, NDArray[np.uint8]], None]:
        def read(window: Window, out: NDArray[np.uint8]) -> None:
            self._read_level(level_index, window, out)

        return read

    def _read_level(self, level_index: int, window: Window, out: NDArray[np.uint8]) -> None:
        """Decode ``window`` (inside level ``level_index``) into ``out`` as uint8 RGB."""
        level = self._levels[level_index]
        if not level.planes:
            image = self._load_plain()
            out[...] = _to_rgb8(image[window.to_slices()], str(self._path))
            return
        if level.channels == 3 and level.dtype == np.uint8:
            raw: NDArray[Any] = out
        else:
            raw = np.empty((*window.shape, level.channels), dtype=level.dtype)
        channel = 0
        for plane in level.planes:
            self._read_plane(plane, window, raw[..., channel : channel + plane.samples])
            channel += plane.samples
        if raw is not out:
            out[...] = _to_rgb8(raw, str(self._path))

    def _read_plane(self, plane: _Plane, window: Window, out: NDArray[Any]) -> None:
        rows = range(window.row // plane.seg_h, (window.row_stop - 1) // plane.seg_h + 1)
        cols = range(window.col // plane.seg_w, (window.col_stop - 1) // plane.seg_w + 1)
        planes = range(plane.samples) if plane.separate else range(1)
        wanted = [plane.segment_index(p, r, c) for p in planes for r in rows for c in cols]
        per_plane = plane.n_rows * plane.n_cols

        def paste(index: int, segment: NDArray[Any]) -> None:
            p, rest = divmod(index, per_plane)
            seg_window = plane.segment_window(*divmod(rest, plane.n_cols))
            overlap = seg_window.intersection(window)
            if overlap is None:  # pragma: no cover - wanted segments always overlap
                return
            src = segment[overlap.relative_to(seg_window).to_slices()]
            dst = out[overlap.relative_to(window).to_slices()]
            if plane.separate:
                dst[..., p] = src[..., 0]
            else:
                dst[...] = src

        missing = []
        for index in wanted:
            segment = self._cache.get((id(plane), index))
            if segment is None:
                missing.append(index)
            else:
                paste(index, segment)
        # Paste each segment as it is decoded: only the cache holds on to them.
        for index, segment in self._decode_segments(plane, missing):
            paste(index, segment)
            self._cache.put((id(plane), index), segment)

    def _decode_segments(
        self, plane: _Plane, indices: Sequence[int]
    ) -> Iterator[tuple[int, NDArray[Any]]]:
        if not indices:
            return
        if self._tif is None:
            raise SlideReadError(f"{self._path}: the reader is closed")
        fh = self._tif.filehandle
        idx = np.asarray(indices, dtype=np.int64)
        # Encoded segments come in batches of about _READ_BYTES, so memory stays bounded.
        batches: Iterator[Any] = fh.read_segments(
            plane.offsets[idx].tolist(),
            plane.bytecounts[idx].tolist(),
            indices=idx.tolist(),
            sort=True,
            lock=fh.lock,
            buffersize=_READ_BYTES,
            flat=False,
        )

        def decode(item: tuple[bytes | None, int]) -> tuple[int, NDArray[Any]]:
            data, index = item
            per_plane = plane.n_rows * plane.n_cols
            seg_window = plane.segment_window(*divmod(index % per_plane, plane.n_cols))
            samples = 1 if plane.separate else plane.samples
            if data is None or len(data) == 0:
                segment = np.full((*seg_window.shape, samples), plane.nodata, dtype=plane.dtype)
                return index, segment
            try:
                decoded, _, _ = plane.decode(data, index, **plane.decode_args)
            except Exception as exc:
                raise SlideReadError(
                    f"{self._path}: cannot decode segment {index} of {plane.name} "
                    f"(corrupt or truncated data: {exc})"
                ) from exc
            if decoded is None:
                segment = np.full((*seg_window.shape, samples), plane.nodata, dtype=plane.dtype)
                return index, segment
            decoded = decoded.reshape(decoded.shape[-3:])
            if decoded.shape[0] < seg_window.height or decoded.shape[1] < seg_window.width:
                raise SlideReadError(
                    f"{self._path}: segment {index} of {plane.name} decodes to "
                    f"{decoded.shape[:2]}, smaller than its {seg_window.shape} pixels"
                )
            return index, decoded[: seg_window.height, : seg_window.width]

        pool = ThreadPoolExecutor(self._max_workers) if self._max_workers > 1 else None
        try:
            for batch in batches:
                if pool is not None and len(batch) > 1:
                    yield from pool.map(decode, batch)
                else:
                    yield from map(decode, batch)
        finally:
            if pool is not None:
                pool.shutdown()

    def _load_plain(self) -> NDArray[Any]:
        with self._lock:
            if self._image is None:
                if not self._levels:
                    raise SlideReadError(f"{self._path}: the reader is closed")
                from PIL import Image

                try:
                    with Image.open(self._path) as image:
                        self._image = np.asarray(image)
                except OSError as exc:
                    raise SlideReadError(f"{self._path}: cannot decode image ({exc})") from exc
            return self._image


def _area_matrix(n_in: int, n_out: int, start: float = 0.0, stop: float | None = None) -> Any:
    """Sparse ``(n_out, n_in)`` matrix averaging pixel areas (a box filter of any factor).

    The outputs split the input span ``[start, stop)`` (default the whole input)
    into ``n_out`` equal parts; each input pixel contributes the share of it
    that lies in an output's part.
    """
    stop = float(n_in) if stop is None else stop
    step = (stop - start) / n_out
    return _edges_matrix(n_in, start + np.arange(n_out + 1, dtype=np.float64) * step)


def _edges_matrix(n_in: int, edges: NDArray[np.float64]) -> Any:
    """Sparse ``(len(edges) - 1, n_in)`` area-averaging matrix of output cells ``[e_i, e_i+1)``."""
    from scipy.sparse import csr_matrix

    n_out = len(edges) - 1
    edges = np.clip(edges, 0.0, n_in)
    first = np.minimum(np.floor(edges[:-1]).astype(np.int64), n_in - 1)
    last = np.minimum(np.ceil(edges[1:]).astype(np.int64), n_in)
    counts = last - first
    out_index = np.repeat(np.arange(n_out), counts)
    in_index = np.repeat(first, counts) + (
        np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    lo = np.maximum(edges[:-1][out_index], in_index)
    hi = np.minimum(edges[1:][out_index], in_index + 1)
    weights = np.clip(hi - lo, 0.0, None)
    weights /= np.add.reduceat(weights, np.cumsum(counts) - counts)[out_index]
    return csr_matrix((weights.astype(np.float32), (out_index, in_index)), shape=(n_out, n_in))


def _area_average(
    read: Callable[[Window, NDArray[np.uint8]], None],
    window: Window,
    inside: Window | None,
    rows: Any,
    cols: Any,
    fill: int,
) -> NDArray[np.uint8]:
    """Apply area matrices to a source window, band by band of its rows.

    ``rows`` and ``cols`` are ``(n, window.height)`` and ``(m, window.width)``
    matrices (:func:`_area_matrix`); ``read(src, out)`` decodes the part
    ``src`` of ``inside`` (the readable part of ``window``) into ``out``; the
    rest of the window counts as ``fill``. Memory: the output plus one band.
    """
    rows = rows.tocsc()
    target = (rows.shape[0], cols.shape[0])
    out = np.zeros((target[0], target[1] * 3), dtype=np.float32)
    band = max(1, _BAND_BYTES // (window.width * 3 * 4))
    for start in range(window.row, window.row_stop, band):
        stop = min(start + band, window.row_stop)
        block = np.full((stop - start, window.width, 3), fill, dtype=np.uint8)
        here = Window.from_bounds(start, window.col, stop, window.col_stop)
        src = None if inside is None else inside.intersection(here)
        if src is not None:
            read(src, block[src.relative_to(here).to_slices()])
        # Average along columns, then add this band's share of each output row.
        flat = block.transpose(1, 0, 2).reshape(window.width, -1).astype(np.float32)
        narrowed = np.asarray(cols @ flat).reshape(target[1], stop - start, 3)
        narrowed = narrowed.transpose(1, 0, 2).reshape(stop - start, -1)
        out += np.asarray(rows[:, start - window.row : stop - window.row] @ narrowed)
    result: NDArray[np.uint8] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return result.reshape(target[0], target[1], 3)


def _grid_average(
    read: Callable[[Window, NDArray[np.uint8]], None],
    shape: tuple[int, int],
    rows: NDArray[np.float64],
    cols: NDArray[np.float64],
    fill: int = 255,
) -> NDArray[np.uint8]:
    """Exact area average of a source of ``shape`` over grid cells with fractional edges.

    ``rows`` and ``cols`` are increasing cell edges in source pixels (``n + 1``
    each); ``read(window, out)`` decodes a window inside ``shape`` into ``out``,
    and source pixels outside ``shape`` count as ``fill``. Output rows are made
    in groups that each read one band of about ``_BAND_BYTES``, every row from a
    single pass, and edges are only ever shifted by whole pixels (exact in
    floating point): so a row's value does not depend on which other rows are
    asked for at once, and a slide read in bands equals an image resampled whole.
    """
    c0, c1 = math.floor(cols[0]), math.ceil(cols[-1])
    col_matrix = _edges_matrix(c1 - c0, cols - c0)
    budget = max(1, _BAND_BYTES // ((c1 - c0) * 3 * 4))
    n = len(rows) - 1
    out = np.empty((n, len(cols) - 1, 3), dtype=np.uint8)
    i = 0
    while i < n:
        r0 = math.floor(rows[i])
        j = int(np.searchsorted(rows, r0 + budget, side="right")) - 1
        j = min(max(j, i + 1), n)
        window = Window.from_bounds(r0, c0, math.ceil(rows[j]), c1)
        row_matrix = _edges_matrix(window.height, rows[i : j + 1] - r0)
        out[i:j] = _area_average(read, window, window.clip(shape), row_matrix, col_matrix, fill)
        i = j
    return out


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


def _to_rgb8(raw: NDArray[Any], name: str) -> NDArray[np.uint8]:
    """Convert ``(h, w[, c])`` pixels of any supported type to ``uint8`` RGB."""
    if raw.ndim == 2:
        raw = raw[..., np.newaxis]
    channels = raw.shape[2]
    values = _scale_to_uint8(raw, name)
    if channels == 3:
        return values
    if channels == 1:
        return np.repeat(values, 3, axis=2)
    if channels == 2:
        color, alpha = np.repeat(values[..., :1], 3, axis=2), values[..., 1:2]
    elif channels == 4:
        color, alpha = values[..., :3], values[..., 3:4]
    else:
        raise SlideReadError(f"{name}: unsupported layout: {channels} channels")
    a = alpha.astype(np.uint16)
    blended = (color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def _scale_to_uint8(raw: NDArray[Any], name: str) -> NDArray[np.uint8]:
    dtype = raw.dtype
    if dtype == np.uint8:
        return raw
    if dtype == np.bool_:
        return raw.astype(np.uint8) * np.uint8(255)
    if dtype.kind in "ui":
        top = np.iinfo(dtype).max
        values = np.clip(raw, 0, top).astype(np.float64)
        scaled: NDArray[np.uint8] = np.rint(values * (255.0 / top)).astype(np.uint8)
        return scaled
    if dtype.kind == "f":
        values = np.nan_to_num(raw.astype(np.float64), nan=0.0)
        clipped: NDArray[np.uint8] = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return clipped
    raise SlideReadError(f"{name}: unsupported pixel type {dtype}")
