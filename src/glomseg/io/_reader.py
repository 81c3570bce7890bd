"""Windowed, memory-bounded reading of whole-slide TIFFs of any HuBMAP layout.

A :class:`SlideReader` decodes only the tiles or strips a window touches, straight
from the TIFF segments (tifffile's decoders, no whole-level reads), and keeps a
small least-recently-used cache of decoded segments so that overlapping windows
read in raster order decode each segment about once. Where the pixels are
(``_tiff_layout``), how segments are decoded and cached (``_tiff_segments``), how
colours convert to RGB (``_tiff_color``), the pixel size (``_tiff_metadata``) and
how windows are resampled (``_resample``) live in their own private modules.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import stat
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import tifffile

from glomseg.errors import SlideReadError, SlideReadWarning, WindowError, look_up_option
from glomseg.io._openslide import INSTALL_HINT as OPENSLIDE_HINT
from glomseg.io._openslide import (
    open_openslide,
    openslide_available,
    openslide_format,
    openslide_levels,
    openslide_pixel_size,
    openslide_tile_shape,
    read_openslide,
)
from glomseg.io._resample import _grid_average as _grid_average
from glomseg.io._resample import _resample_window
from glomseg.io._tiff_color import ColorModel, plain_to_rgb8
from glomseg.io._tiff_layout import Level, Plane, check_segments, find_levels
from glomseg.io._tiff_metadata import find_pixel_size
from glomseg.io._tiff_segments import SegmentCache, decode_segments
from glomseg.io._window import Window

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["SlideReader"]

logger = logging.getLogger(__name__)

Boundary = Literal["pad", "error"]
Backend = Literal["auto", "glomseg", "openslide"]
"""Which reader opens a slide: see :class:`SlideReader`."""

#: Pixels that are already uint8 RGB: plain images and what OpenSlide returns.
_RGB8 = ColorModel("rgb", 3, np.dtype(np.uint8), 255, (0, 1, 2))
_PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
#: Pillow modes read as they are; other modes are converted by Pillow first.
_PLAIN_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N"}
#: Missing segments named in one warning.
_LISTED = 5


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer (a Python or numpy one, not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """Whether ``value`` is a real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _memory_bytes() -> int:
    """Physical memory of this machine (a bound no single read may exceed)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 2**40


class SlideReader:
    """Read windows of a whole-slide image as ``uint8`` RGB, without decoding the whole slide.

    Opens any of the HuBMAP TIFF layouts lazily: interleaved ``(H, W, 3)``,
    planar ``(3, H, W)`` in one page, one page per colour (also OME
    ``(1, 1, 3, H, W)``), or one series per colour (what GDAL shows as
    subdatasets); tiled or striped; uncompressed, LZW, deflate, JPEG or any
    other codec tifffile decodes; classic TIFF or BigTIFF; with pyramid levels
    (OME SubIFDs, or reduced-resolution series) where present. Plain JPEG/PNG
    images open too; they are decoded whole on first read, so use them only for
    small images. The user guide's :doc:`/tiff_support` page lists every TIFF
    layout and photometric interpretation and what is done with it.

    Reading decodes only the tiles or strips that a window touches. Decoded
    segments go to an LRU cache bounded by ``cache_bytes``, so overlapping
    windows read in raster order decode each segment about once, even in
    striped files whose strips span the whole width. Memory is therefore
    O(window + ``cache_bytes``), independent of the slide size; pass
    ``cache_bytes=0`` for strictly O(window).

    Pixel values are converted to ``uint8`` RGB:

    - Grey (MINISBLACK, or MINISWHITE, inverted) is repeated into R, G and B;
      palette images are looked up in their colour map; YCbCr, CMYK (without
      colour management, as libtiff and Pillow do) and CIELab (with Little CMS)
      are converted; an alpha sample is composited over white (the colour of
      empty glass); unspecified extra samples are ignored.
    - Integers of ``b`` bits are scaled by ``255 / (2**b - 1)`` (``uint16``
      ``65535 -> 255``, 4-bit ``15 -> 255``), rounding to nearest; signed
      integers are clipped to ``[0, max]`` and scaled likewise; floats are
      taken as ``[0, 1]`` and clipped; 1-bit samples map to 0 and 255.
    - Several same-size pages are three colours (R, G, B) or refused: a
      z-stack, a time series or any other stack raises
      :class:`~glomseg.errors.SlideReadError`, as do photometric interpretations and
      codecs it cannot convert correctly.
    - A tile or strip with no data (byte count 0) reads as ``fill`` (white by
      default) with a :class:`~glomseg.errors.SlideReadWarning` naming it, as
      openslide shows missing tiles as transparent.

    Other whole-slide formats (NDPI, MRXS, SCN, BIF, VMS, DICOM WSI, ...) open
    through OpenSlide when the ``openslide`` extra is installed (``pip install
    'glomseg[openslide]'``), with the same API: a file that is not a TIFF goes
    to OpenSlide when OpenSlide recognises it; a TIFF (SVS and NDPI included)
    keeps glomseg's reader, which is faster and handles the HuBMAP layouts,
    unless ``backend="openslide"`` asks for OpenSlide (see
    :doc:`/tiff_support`).

    Parameters
    ----------
    path : str or os.PathLike
        The slide file.
    backend : {"auto", "glomseg", "openslide"}
        Which reader opens the file: ``"auto"`` (the default) glomseg's for
        TIFFs and plain images and OpenSlide for other formats it recognises;
        ``"glomseg"`` or ``"openslide"`` only that one.
    cache_bytes : int, optional
        Upper bound for the decoded-segment cache, default 512 MiB.
    max_workers : int, optional
        Threads decoding segments of one window in parallel (the codecs
        release the GIL). Default: ``min(4, os.cpu_count())``.

    Raises
    ------
    SlideReadError
        If the file is missing, not a regular file, not a TIFF or image,
        truncated, corrupt, or of an unsupported layout. The message names the
        file and the reason.

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
        backend: Backend = "auto",
        cache_bytes: int = 512 * 2**20,
        max_workers: int | None = None,
    ) -> None:
        look_up_option("backend", backend, get_args(Backend))
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._path = Path(path)
        self._backend = backend
        self._slide: Any = None  # an OpenSlide handle, when OpenSlide reads the file
        self._cache_bytes = cache_bytes
        self._max_workers = max_workers or min(4, os.cpu_count() or 1)
        self._cache = SegmentCache(cache_bytes)
        self._tif: tifffile.TiffFile | None = None
        self._image: NDArray[Any] | None = None
        self._levels: list[Level] = []
        self._layout = ""
        self._lock = threading.RLock()
        self._pixel_size: float | None = None
        self._pixel_size_read = False
        self._warned: set[tuple[int, int]] = set()
        self._open()

    # -- opening ----------------------------------------------------------
    def _open(self) -> None:
        path = self._path
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise SlideReadError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:  # name too long, permission, NUL byte, ...
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SlideReadError(f"{path}: cannot access the file ({reason})") from exc
        if stat.S_ISDIR(mode):
            raise SlideReadError(f"{path}: is a directory, not a slide file")
        if not stat.S_ISREG(mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
            raise SlideReadError(f"{path}: not a regular file but {kind}; cannot read a slide")
        if self._backend == "openslide":
            self._open_openslide()
            return
        if path.suffix.lower() in _PLAIN_IMAGE_SUFFIXES:
            self._open_plain_image()
            return
        try:
            tif = tifffile.TiffFile(path)
        except tifffile.TiffFileError as exc:
            if self._backend == "auto" and openslide_format(path) is not None:
                self._open_openslide()
                return
            hint = (
                ""
                if openslide_available()
                else "; other whole-slide formats (NDPI, MRXS, SCN, DICOM, ...) open with "
                f"the openslide extra: {OPENSLIDE_HINT}"
            )
            raise SlideReadError(f"{path}: not a readable TIFF file ({exc}){hint}") from exc
        except Exception as exc:  # tifffile raises struct.error, OSError, ... on cut headers
            raise SlideReadError(
                f"{path}: cannot open as TIFF ({type(exc).__name__}: {exc})"
            ) from exc
        self._tif = tif
        try:
            tif.filehandle.set_lock(True)
            self._levels, self._layout = find_levels(tif, str(path))
            check_segments(self._levels, tif, str(path))
        except SlideReadError:
            self._close_file()
            # A vendor's TIFF dialect that our reader cannot lay out (never a plain TIFF,
            # whose errors stay ours): OpenSlide's, where it knows the vendor.
            vendor = openslide_format(path) if self._backend == "auto" else None
            if vendor not in (None, "generic-tiff"):
                self._open_openslide()
                return
            raise
        except Exception as exc:  # tifffile raises many kinds on corrupt tags
            self._close_file()
            raise SlideReadError(
                f"{path}: corrupt or unsupported TIFF ({type(exc).__name__}: {exc})"
            ) from exc

    def _close_file(self) -> None:
        if self._tif is not None:
            try:
                self._tif.close()
            finally:
                self._tif = None
                self._levels = []

    def _open_openslide(self) -> None:
        handle = open_openslide(self._path)
        levels = openslide_levels(handle)
        self._slide = handle
        self._levels = [Level(h, w, ds, (), _RGB8) for h, w, ds in levels]
        vendor = handle.properties.get("openslide.vendor", "unknown vendor")
        self._layout = f"read by OpenSlide ({vendor}), {len(levels)} level(s)"

    def _open_plain_image(self) -> None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self._path) as image:
                width, height = image.size
                mode = image.mode
        except Image.DecompressionBombError as exc:
            raise SlideReadError(_too_large(self._path, exc)) from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise SlideReadError(f"{self._path}: not a readable image file ({exc})") from exc
        self._levels = [Level(height, width, 1.0, (), _RGB8)]
        self._layout = f"plain image ({mode}), decoded whole on first read"

    # -- properties -------------------------------------------------------
    def _require_open(self) -> list[Level]:
        if not self._levels:
            raise SlideReadError(f"{self._path}: the reader is closed")
        return self._levels

    @property
    def path(self) -> Path:
        """The slide file."""
        return self._path

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the full-resolution level, in pixels."""
        base = self._require_open()[0]
        return (base.height, base.width)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The pixel type stored in the file (reads always return ``uint8``)."""
        base = self._require_open()[0]
        if base.planes:
            return base.dtype
        if self._slide is not None:
            return np.dtype(np.uint8)
        return self._load_plain().dtype

    @property
    def channels(self) -> int:
        """Number of channels stored in the file (reads always return 3)."""
        base = self._require_open()[0]
        if base.planes:
            return base.channels
        if self._slide is not None:
            return 3
        image = self._load_plain()
        return 1 if image.ndim == 2 else int(image.shape[2])

    @property
    def level_count(self) -> int:
        """Number of resolution levels (1 when the file has no pyramid)."""
        return len(self._require_open())

    @property
    def level_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(height, width)`` of each level, full resolution first."""
        return tuple((lv.height, lv.width) for lv in self._require_open())

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level relative to full resolution."""
        return tuple(lv.downsample for lv in self._require_open())

    @property
    def segment_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the tiles or strips the full-resolution level is stored in.

        Strips span the whole width. A plain image counts as one segment.
        """
        base = self._require_open()[0]
        if self._slide is not None:
            return openslide_tile_shape(self._slide, base.height, base.width)
        if not base.planes:
            return (base.height, base.width)
        first = base.planes[0]
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
        base = self._require_open()[0]
        if not self._pixel_size_read:
            if self._tif is not None and base.planes:
                self._pixel_size = find_pixel_size(self._tif, base.planes[0].page, self._path)
            elif self._slide is not None:
                self._pixel_size = openslide_pixel_size(self._slide, self._path)
            self._pixel_size_read = True
        return self._pixel_size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return (
            self._tif is None and self._slide is None and self._image is None and not self._levels
        )

    def __repr__(self) -> str:
        h, w = self.shape if self._levels else (0, 0)
        return f"SlideReader({str(self._path)!r}, shape=({h}, {w}), layout={self._layout!r})"

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Close the file and drop the cache. Further reads raise :class:`SlideReadError`."""
        if self._tif is not None:
            self._tif.close()
        if self._slide is not None:
            self._slide.close()
        self._tif = None
        self._slide = None
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
            "backend": self._backend,
            "cache_bytes": self._cache_bytes,
            "max_workers": self._max_workers,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            backend=state.get("backend", "auto"),
            cache_bytes=state["cache_bytes"],
            max_workers=state["max_workers"],
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
            Resample the window to this ``(height, width)`` of positive integers.
        downsample : float, optional
            Resample the window by this finite factor (> 0): the output is
            ``max(1, round(h / downsample))`` by ``max(1, round(w / downsample))``.
            Give at most one of ``out_shape`` and ``downsample``.
        boundary : {"pad", "error"}
            What to do with a window partly outside the slide: ``"pad"`` fills
            the outside part with ``fill``; ``"error"`` raises. A window wholly
            outside the slide always raises.
        fill : int
            The value, an integer 0-255, of padded pixels and of tiles or strips
            the file has no data for; default 255, white like glass.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``(h, w, 3)`` (or ``out_shape + (3,)``).

        Raises
        ------
        WindowError
            If an argument is invalid, the window lies wholly outside the slide
            (or partly, with ``boundary="error"``), or the output would not fit
            in this machine's memory. The message names the file.
        SlideReadError
            If the file is closed or its data is corrupt.

        Warns
        -----
        SlideReadWarning
            Once per tile or strip without data (byte count 0) that a read touches.

        Notes
        -----
        A resampled read averages pixel areas (a box filter of any factor, whole
        or fractional, like OpenCV's ``INTER_AREA``). It reads from the coarsest
        pyramid level whose downsample does not exceed the requested one, band
        by band of rows, so memory stays bounded by the output plus one band
        (32 MiB) whatever the window's size; the part of the window outside the
        slide is never read, so a huge window costs no more than the slide.
        Without a pyramid the result equals the exact area average of the
        full-resolution window up to rounding; from a pyramid level it is the
        exact area average of the level's pixels over the window's (fractional)
        footprint, so the difference is the file writer's own resampling, a few
        grey levels (a mean absolute difference of at most 3 on the tests'
        synthetic slides for windows on the level's grid; windows off that grid
        are also blurred by up to one level pixel, up to about 5).
        """
        self._require_open()
        try:
            look_up_option("boundary", boundary, ("pad", "error"))
        except ValueError as exc:
            raise WindowError(f"{self._path}: {exc}") from None
        if not _is_int(fill) or not 0 <= int(fill) <= 255:
            raise WindowError(f"{self._path}: fill must be an integer in 0..255, got {fill!r}")
        fill = int(fill)
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
        resampled = target != window.shape
        self._check_output(target, window, resampled)
        if not resampled:
            try:
                if inside == window:  # every pixel is overwritten
                    out = np.empty((*window.shape, 3), dtype=np.uint8)
                else:
                    out = np.full((*window.shape, 3), fill, dtype=np.uint8)
            except MemoryError:
                raise self._too_large(target, window) from None
            self._read_level(0, inside, out[inside.relative_to(window).to_slices()], fill)
            return out
        return self._read_resampled(window, target, fill)

    def _target_shape(
        self, window: Window, out_shape: tuple[int, int] | None, downsample: float | None
    ) -> tuple[int, int]:
        if out_shape is not None and downsample is not None:
            raise WindowError(f"{self._path}: give at most one of out_shape and downsample")
        if downsample is not None:
            if not _is_real(downsample) or not math.isfinite(downsample) or not downsample > 0:
                raise WindowError(
                    f"{self._path}: downsample must be a finite number > 0, got {downsample!r}"
                )
            rows, cols = window.height / downsample, window.width / downsample
            if not (math.isfinite(rows) and math.isfinite(cols)):
                raise self._too_large((rows, cols), window)
            return (max(1, round(rows)), max(1, round(cols)))
        if out_shape is not None:
            if (
                not isinstance(out_shape, Sequence)
                or len(out_shape) != 2
                or not all(_is_int(n) and int(n) > 0 for n in out_shape)
            ):
                raise WindowError(
                    f"{self._path}: out_shape must be 2 positive integers, got {out_shape!r}"
                )
            return (int(out_shape[0]), int(out_shape[1]))
        return window.shape

    def _too_large(self, target: tuple[float, float], window: Window) -> WindowError:
        gib = float(target[0]) * float(target[1]) * 3 / 2**30
        size = f"{gib:.3g} GiB" if math.isfinite(gib) else "over 1e300 GiB"
        return WindowError(
            f"{self._path}: reading window {window} as {float(target[0]):.4g} x "
            f"{float(target[1]):.4g} pixels needs {size}, more than this machine's "
            f"{_memory_bytes() / 2**30:.3g} GiB; read a smaller window or downsample more"
        )

    def _check_output(self, target: tuple[int, int], window: Window, resampled: bool) -> None:
        """Refuse an output that cannot fit in memory (resampling also holds float32 sums)."""
        needed = target[0] * target[1] * 3 * (5 if resampled else 1)
        if needed > _memory_bytes():
            raise self._too_large(target, window)

    def _read_resampled(
        self, window: Window, target: tuple[int, int], fill: int
    ) -> NDArray[np.uint8]:
        wanted = min(window.height / target[0], window.width / target[1])
        level_index = self._level_for(wanted)
        level = self._levels[level_index]
        ds = level.downsample
        # The window's exact (fractional) span in the level's pixel grid.
        rows = (window.row / ds, window.row_stop / ds)
        cols = (window.col / ds, window.col_stop / ds)
        try:
            return _resample_window(
                self._level_reader(level_index, fill),
                (level.height, level.width),
                rows,
                cols,
                target,
                fill,
            )
        except MemoryError:
            raise self._too_large(target, window) from None

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
        other cells asked for (see :func:`glomseg.io._resample._grid_average`).
        """
        self._require_open()
        wanted = float(rows[-1] - rows[0]) / max(1, len(rows) - 1)
        level_index = self._level_for(wanted)
        level = self._levels[level_index]
        if level_index:
            rows, cols = rows / level.downsample, cols / level.downsample
        read = self._level_reader(level_index, fill)
        return _grid_average(read, (level.height, level.width), rows, cols, fill)

    def _level_for(self, wanted: float) -> int:
        """The coarsest level whose downsample does not exceed ``wanted`` (0 if none)."""
        level_index = 0
        for i, level in enumerate(self._levels):
            if level.downsample <= wanted * (1 + 1e-3):
                level_index = i
        return level_index

    def _level_reader(
        self, level_index: int, fill: int
    ) -> Callable[[Window, NDArray[np.uint8]], None]:
        def read(window: Window, out: NDArray[np.uint8]) -> None:
            self._read_level(level_index, window, out, fill)

        return read

    def _read_level(
        self, level_index: int, window: Window, out: NDArray[np.uint8], fill: int
    ) -> None:
        """Decode ``window`` (inside level ``level_index``) into ``out`` as uint8 RGB."""
        levels = self._require_open()
        level = levels[level_index]
        if self._slide is not None:
            read_openslide(
                self._slide, self._path, level_index, level.downsample, window, out, fill
            )
            return
        if not level.planes:
            image = self._load_plain()
            out[...] = plain_to_rgb8(image[window.to_slices()])
            return
        gaps = any(plane.missing is not None for plane in level.planes)
        raw: NDArray[Any]
        if level.color.plain_rgb8:
            raw = out
        elif gaps:  # unread parts must hold valid samples (palette indices) until filled
            raw = np.zeros((*window.shape, level.channels), dtype=level.dtype)
        else:
            raw = np.empty((*window.shape, level.channels), dtype=level.dtype)
        missing: list[tuple[Plane, int, Window]] = []
        channel = 0
        for plane in level.planes:
            self._read_plane(plane, window, raw[..., channel : channel + plane.samples], missing)
            channel += plane.samples
        if raw is not out:
            try:
                out[...] = level.color.to_rgb8(raw)
            except SlideReadError:
                raise
            except Exception as exc:
                raise SlideReadError(
                    f"{self._path}: cannot convert the pixels of {level.planes[0].name} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        if missing:
            for _, _, overlap in missing:
                out[overlap.relative_to(window).to_slices()] = fill
            self._warn_missing(missing, fill)

    def _warn_missing(self, missing: list[tuple[Plane, int, Window]], fill: int) -> None:
        with self._lock:
            new = [(p, i) for p, i, _ in missing if (id(p), i) not in self._warned]
            self._warned.update((id(p), i) for p, i in new)
        if not new:
            return
        plane = new[0][0]
        listed = []
        for p, i in dict.fromkeys(new):
            w = p.window_of(i)
            listed.append(
                f"{p.segment_kind} {i} of {p.name} (rows {w.row}-{w.row_stop - 1}, "
                f"cols {w.col}-{w.col_stop - 1})"
            )
        more = f" and {len(listed) - _LISTED} more" if len(listed) > _LISTED else ""
        warnings.warn(
            f"{self._path}: {'; '.join(listed[:_LISTED])}{more}: no data in the file "
            f"(byte count 0); read as fill {fill} ({plane.segment_kind}s the writer "
            "skipped, or a damaged offset table)",
            SlideReadWarning,
            stacklevel=4,
        )

    def _read_plane(
        self,
        plane: Plane,
        window: Window,
        out: NDArray[Any],
        missing: list[tuple[Plane, int, Window]],
    ) -> None:
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

        if plane.missing is not None:
            for index in [i for i in wanted if plane.missing[i]]:
                overlap = plane.window_of(index).intersection(window)
                if overlap is not None:
                    missing.append((plane, index, overlap))
            wanted = [i for i in wanted if not plane.missing[i]]
        to_decode = []
        for index in wanted:
            segment = self._cache.get((id(plane), index))
            if segment is None:
                to_decode.append(index)
            else:
                paste(index, segment)
        if not to_decode:
            return
        tif = self._tif
        if tif is None:
            raise SlideReadError(f"{self._path}: the reader is closed")
        decoded = decode_segments(
            tif, plane, to_decode, path=self._path, max_workers=self._max_workers
        )
        # Paste each segment as it is decoded: only the cache holds on to them.
        for index, segment in decoded:
            paste(index, segment)
            self._cache.put((id(plane), index), segment)

    def _load_plain(self) -> NDArray[Any]:
        with self._lock:
            if self._image is None:
                self._require_open()
                from PIL import Image

                try:
                    with Image.open(self._path) as image:
                        if image.mode in _PLAIN_MODES:
                            self._image = np.asarray(image)
                        elif image.mode in ("I", "F"):
                            raise SlideReadError(
                                f"{self._path}: unsupported image mode {image.mode} "
                                "(32-bit samples of unknown range)"
                            )
                        else:  # palette, 1-bit, CMYK, YCbCr, ...: Pillow converts them
                            alpha = "A" in image.mode or "transparency" in image.info
                            self._image = np.asarray(image.convert("RGBA" if alpha else "RGB"))
                except SlideReadError:
                    raise
                except Image.DecompressionBombError as exc:
                    raise SlideReadError(_too_large(self._path, exc)) from exc
                except (OSError, ValueError) as exc:
                    raise SlideReadError(f"{self._path}: cannot decode image ({exc})") from exc
            return self._image


def _too_large(path: Path, error: Exception) -> str:
    """What to say of a plain image larger than Pillow agrees to decode whole."""
    return (
        f"{path}: too large to decode whole as a plain image ({error}); store the slide "
        "as a tiled TIFF, which is read window by window (or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file and have the memory)"
    )
