"""Whole-slide prediction in bounded memory, its outputs, and whole-slide Dice.

:func:`predict_slide` runs any :class:`~glomseg.Predictor` over a slide and
writes a full-resolution :class:`SlideMask`:

0. The tile size and ``downsample`` come from the config, else from the model
   and the slide's pixel size (:func:`glomseg.resolve_scale`), so that
   glomeruli have the size the model learned.
1. A reader thread reads the slide band by band of rows at the prediction
   resolution (``downsample``, whole or fractional: each prediction pixel is
   the area average of its footprint), each full-resolution pixel decoded
   about once, and cuts the bands into overlapping tiles of a regular grid. Tiles with no tissue
   (no pixel whose HSV saturation exceeds ``saturation_threshold``, the rule of
   :func:`glomseg.tile_stats`) are marked as background and never reach the
   predictor. Tiles wait in a bounded queue, so reading runs ahead of the
   predictor.
2. The calling thread only batches tiles and calls the predictor (after the
   model's stain normaliser, optionally with flip test-time augmentation), so
   the model is never idle on stitching.
3. A writer thread blends the predictions into a :class:`~glomseg.BandStitcher`,
   which holds one band of ``tile_size`` rows, normalises the rows no later
   tile touches, thresholds them, maps them to full resolution by the
   pixel-centre rule (full-resolution pixel ``r`` takes prediction pixel
   ``floor((r + 0.5) / downsample)``: for a whole factor each prediction pixel
   becomes a ``downsample`` x ``downsample`` block, cropped at the slide edge)
   and writes them to a chunked zarr array on disk.

Memory is O(slide width x tile size), not O(slide): for a 31299 x 44066 slide at
``downsample=2`` with 512-pixel tiles the band of sums is 45 MB. The mask is
written to a temporary folder beside ``out`` and renamed into place at the end,
so a failed run never leaves a half-written mask.

The :class:`SlideMask` is read lazily, window by window, and exports Kaggle RLE
(:meth:`SlideMask.rle`), QuPath polygons (:meth:`SlideMask.write_annotations`)
and a tiled TIFF (:meth:`SlideMask.to_tiff`). :func:`write_submission_csv`
writes the RLE of many slides, :func:`write_overlay` draws a thumbnail with the
prediction and the truth, and :func:`evaluate_slide` scores a mask against
annotation polygons window by window.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from glomseg._annotations import Annotation, read_annotations, write_annotations
from glomseg._files import atomic_path
from glomseg._filtering import tissue_pixels
from glomseg._rasterize import DEFAULT_SPECK_AREA, MaskRasterizer, mask_to_polygons
from glomseg._reader import SlideReader
from glomseg._rle import rle_encode, write_submission
from glomseg._scale import (
    _as_downsample,
    _block_mean,
    _centres,
    _edges,
    _stain_normalizer,
    _tile_model,
    resolve_scale,
)
from glomseg._stitch import (
    BLENDINGS,
    GRID_EDGES,
    BandStitcher,
    Blending,
    GridEdge,
    Predictor,
    _default_stride,
    check_probabilities,
    prediction_shape,
)
from glomseg._tiling import _positive_int
from glomseg._window import Window
from glomseg.errors import look_up_option

if TYPE_CHECKING:
    import zarr
    from shapely.geometry import Polygon

__all__ = [
    "DiceReport",
    "MaskLike",
    "PredictConfig",
    "PredictionStats",
    "SlideDice",
    "SlideMask",
    "evaluate_slide",
    "evaluate_slides",
    "predict_slide",
    "write_overlay",
    "write_submission_csv",
]

logger = logging.getLogger(__name__)

TiffCompression = Literal["deflate", "packbits", "none"]
_TIFF_CODECS: dict[str, str | None] = {"deflate": "zlib", "packbits": "packbits", "none": None}

#: Bytes of full-resolution pixels read from the slide at once by the reader thread.
_READ_BYTES = 48 * 2**20
#: Segment cache of a slide that :func:`predict_slide` opens itself.
_CACHE_BYTES = 192 * 2**20
#: Bytes of mask read at once when scanning a :class:`SlideMask`.
_SCAN_BYTES = 64 * 2**20
#: Seconds a thread waits on a queue before checking whether it should stop.
_POLL_S = 0.1
#: The zarr attribute that marks a glomseg mask and holds its metadata.
_ATTR = "glomseg_mask"


def _unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


# -- configuration and statistics -------------------------------------------------------------


@dataclass(frozen=True)
class PredictConfig:
    """How :func:`predict_slide` tiles, predicts, blends and thresholds a slide.

    Parameters
    ----------
    tile_size : int, optional
        Tile side in pixels at prediction resolution (what the model sees), > 0.
        Default ``None``: the model's ``config.input_size``, or 512 for a
        predictor without one (see :func:`glomseg.resolve_scale`).
    stride : int, optional
        Grid step in prediction pixels, ``1 <= stride <= tile_size``; default
        ``tile_size * 3 // 4`` (a quarter overlap), the default of
        :func:`glomseg.sliding_window_predict` too. Once the tile size is known
        it holds an int.
    downsample : int or float, optional
        Factor from full resolution to prediction resolution, > 0; a tile covers
        ``tile_size * downsample`` full-resolution pixels a side. A whole factor
        (kept as an ``int``) averages and repeats exact blocks; a fractional one
        averages each prediction pixel's exact fractional footprint, and one
        below 1 upsamples. Default ``None``: from the model and the input's
        pixel size (see :func:`glomseg.resolve_scale`); a value given here
        always wins.
    batch_size : int
        Tiles per predictor call, > 0.
    blending : {"gaussian", "mean", "crop"}
        How overlapping predictions are weighted (see :mod:`glomseg._stitch`).
    tta : bool
        Average flip test-time augmentation (4 predictor calls per batch).
    threshold : float
        A pixel is in the mask when its blended probability is strictly greater,
        in ``[0, 1)``.
    edge : {"shift", "pad"}
        The last tile along an axis ends at the slide edge (``"shift"``), or
        extends past it and is padded with white glass (``"pad"``).
    skip_background : bool
        Do not predict tiles without tissue; they count as probability 0.
    saturation_threshold : int
        A pixel is tissue when its HSV saturation (0-255) is strictly greater,
        the rule of :func:`glomseg.tile_stats`; in ``[0, 255]``.
    min_tissue : float
        A tile is background when its tissue fraction is at most this, in
        ``[0, 1)``. The default 0 skips only tiles without a single tissue pixel,
        which cannot dilute the prediction of a neighbouring tile where the
        tiles overlap (a skipped tile's area holds no tissue).
    prefetch : int
        Tiles to predict that the reader thread may read ahead of the predictor,
        > 0 (each ``tile_size**2 * 3`` bytes). Background tiles take no slot, so
        the reader runs through glass while the predictor works on tissue.
    chunk_size : int
        Side of the square chunks of the mask on disk, a multiple of 16.

    Raises
    ------
    ValueError, TypeError
        If a value is out of range; the message names the parameter.

    Examples
    --------
    >>> PredictConfig(tile_size=256, downsample=2).stride
    192
    >>> PredictConfig(downsample=2.5)  # the tile size will come from the model
    PredictConfig(tile_size=None, stride=None, downsample=2.5, batch_size=8, ...)
    >>> PredictConfig(tile_size=256, stride=300)
    Traceback (most recent call last):
    ...
    ValueError: stride must be in [1, tile_size=256], got 300
    >>> PredictConfig(blending="gausian")
    Traceback (most recent call last):
    ...
    ValueError: blending must be one of 'crop', 'gaussian', 'mean', got 'gausian'; did you ...
    """

    _: KW_ONLY
    tile_size: int | None = None
    stride: int | None = None
    downsample: int | float | None = None
    batch_size: int = 8
    blending: Blending = "gaussian"
    tta: bool = False
    threshold: float = 0.5
    edge: GridEdge = "shift"
    skip_background: bool = True
    saturation_threshold: int = 40
    min_tissue: float = 0.0
    prefetch: int = 64
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        tile_size = None if self.tile_size is None else _positive_int("tile_size", self.tile_size)
        stride = self.stride
        if stride is None and tile_size is not None:
            stride = _default_stride(tile_size)
        if stride is not None:
            if isinstance(stride, bool) or not isinstance(stride, int | np.integer):
                raise TypeError(f"stride must be an integer, got {stride!r}")
            if tile_size is None and stride < 1:
                raise ValueError(f"stride must be >= 1, got {stride}")
            if tile_size is not None and not 1 <= stride <= tile_size:
                raise ValueError(f"stride must be in [1, tile_size={tile_size}], got {stride}")
            stride = int(stride)
        object.__setattr__(self, "tile_size", tile_size)
        object.__setattr__(self, "stride", stride)
        if self.downsample is not None:
            object.__setattr__(self, "downsample", _as_downsample("downsample", self.downsample))
        object.__setattr__(self, "batch_size", _positive_int("batch_size", self.batch_size))
        look_up_option("blending", self.blending, BLENDINGS)
        look_up_option("edge", self.edge, GRID_EDGES)
        for name in ("tta", "skip_background"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "threshold", _unit_interval("threshold", self.threshold))
        object.__setattr__(self, "min_tissue", _unit_interval("min_tissue", self.min_tissue))
        sat = _positive_int("saturation_threshold", self.saturation_threshold, minimum=0)
        if sat > 255:
            raise ValueError(f"saturation_threshold must be in [0, 255], got {sat}")
        object.__setattr__(self, "saturation_threshold", sat)
        object.__setattr__(self, "prefetch", _positive_int("prefetch", self.prefetch))
        chunk = _positive_int("chunk_size", self.chunk_size, minimum=16)
        if chunk % 16:
            raise ValueError(f"chunk_size must be a multiple of 16, got {chunk}")
        object.__setattr__(self, "chunk_size", chunk)

    @property
    def grid_stride(self) -> int:
        """The stride as an int; only known once ``tile_size`` is."""
        if self.stride is None:
            raise ValueError(
                "the stride is not known before the tile size: give tile_size, or let "
                "predict_slide take it from the model"
            )
        return self.stride


@dataclass
class PredictionStats:
    """Where the time of a :func:`predict_slide` run went.

    Stage times are the busy seconds of each stage, summed over the threads
    that run it, so they may add up to more than ``wall_s``.

    Attributes
    ----------
    tiles, predicted, skipped : int
        Tiles in the grid, tiles sent to the predictor, background tiles skipped.
    wall_s : float
        Wall-clock seconds of the whole run.
    read_s : float
        Reader thread: reading the slide, resampling, tissue detection, cutting tiles.
    predict_s : float
        Calling thread: inside the predictor (flip TTA included).
    stitch_s : float
        Writer thread: blending, normalising, thresholding and upsampling.
    write_s : float
        Writer thread: writing mask chunks to disk.
    read_wait_s : float
        Calling thread idle, waiting for the reader: I/O the prefetching did not hide.
    write_wait_s : float
        Calling thread blocked on a full writer queue (the writer fell behind).

    Examples
    --------
    >>> import numpy as np
    >>> from glomseg.synthetic import write_synthetic_slide
    >>> slide = write_synthetic_slide(getfixture("tmp_path") / "s.tif", (600, 800), tile=64)
    >>> config = PredictConfig(tile_size=32, downsample=2)  # corner tiles are glass
    >>> mask = predict_slide(slide.path, lambda b: np.zeros(b.shape[:3], np.float32),
    ...                      config=config, progress=False)
    >>> stats = mask.stats
    >>> stats.tiles == stats.predicted + stats.skipped, stats.predicted > 0, stats.skipped > 0
    (True, True, True)
    """

    tiles: int = 0
    predicted: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    read_s: float = 0.0
    predict_s: float = 0.0
    stitch_s: float = 0.0
    write_s: float = 0.0
    read_wait_s: float = 0.0
    write_wait_s: float = 0.0

    @property
    def overhead_s(self) -> float:
        """Wall time not spent in the predictor, ``wall_s - predict_s``."""
        return self.wall_s - self.predict_s


# -- the mask store ---------------------------------------------------------------------------


def _open_zarr(path: Path, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
    import zarr

    from glomseg.errors import SlideReadError

    try:
        array = zarr.open_array(str(path), mode=mode)
    except Exception as exc:  # zarr raises several kinds for a missing/foreign store
        raise SlideReadError(f"{path}: not a glomseg mask store ({exc})") from exc
    if array.ndim != 2 or array.dtype != np.uint8:
        raise SlideReadError(
            f"{path}: a mask store must be 2-D uint8, got {array.ndim}-D {array.dtype}"
        )
    return array


class SlideMask:
    """A full-resolution glomerulus mask on disk, read lazily window by window.

    The mask is a chunked zarr array of ``uint8`` 0/1 (zstd-compressed, chunks
    of background not stored), as written by :func:`predict_slide`. Reads
    return ``bool``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.zarr`` folder.

    Raises
    ------
    SlideReadError
        If ``path`` is not a 2-D ``uint8`` zarr array.

    Examples
    --------
    >>> import numpy as np
    >>> from glomseg import Window
    >>> m = SlideMask.from_array(np.eye(4, dtype=bool), getfixture("tmp_path") / "m.zarr")
    >>> m.shape, m.read(Window(0, 0, 2, 3)).astype(int)
    ((4, 4), array([[1, 0, 0],
           [0, 1, 0]]))
    >>> m.rle()  # Kaggle: column-major, 1-based
    '1 1 6 1 11 1 16 1'
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._array = _open_zarr(self._path)
        self._stats: PredictionStats | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @classmethod
    def from_array(
        cls,
        mask: NDArray[Any],
        path: str | os.PathLike[str],
        *,
        chunk_size: int = 1024,
        attributes: Mapping[str, Any] | None = None,
    ) -> SlideMask:
        """Store an in-memory 2-D mask (nonzero = inside) as a :class:`SlideMask`.

        Parameters
        ----------
        mask : numpy.ndarray
            2-D bool or integer mask.
        path : str or os.PathLike
            The ``.zarr`` folder to create; an existing one is replaced.
        chunk_size : int
            Side of the square chunks.
        attributes : mapping, optional
            JSON-serializable metadata stored with the mask.
        """
        array = np.asarray(mask)
        if array.ndim != 2 or (array.dtype != np.bool_ and array.dtype.kind not in "iu"):
            raise ValueError(
                f"mask must be a 2-D bool or integer array, got {array.dtype} {array.shape}"
            )
        chunk_size = _positive_int("chunk_size", chunk_size)
        path = Path(path)
        h, w = array.shape
        with _atomic_dir(path) as tmp:
            store = _create_store(tmp, (h, w), chunk_size, dict(attributes or {}))
            band = max(chunk_size, _SCAN_BYTES // max(1, w) // chunk_size * chunk_size)
            for start in range(0, h, band):
                store[start : start + band] = (array[start : start + band] != 0).view(np.uint8)
        return cls(path)

    # -- properties -----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The ``.zarr`` folder."""
        return self._path

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in full-resolution pixels."""
        h, w = self._array.shape
        return (int(h), int(w))

    @property
    def chunks(self) -> tuple[int, int]:
        """``(height, width)`` of the chunks on disk."""
        h, w = self._array.chunks
        return (int(h), int(w))

    @property
    def attributes(self) -> dict[str, Any]:
        """The metadata :func:`predict_slide` stored: config, slide path, shape."""
        value = dict(self._array.attrs).get(_ATTR, {})
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def stats(self) -> PredictionStats | None:
        """Timings of the :func:`predict_slide` run that made this mask, if it did."""
        return self._stats

    def __repr__(self) -> str:
        return f"SlideMask({str(self._path)!r}, shape={self.shape})"

    # -- reading --------------------------------------------------------------------------
    def read(self, window: Window | None = None) -> NDArray[np.bool_]:
        """Read a window of the mask (default: all of it; mind the memory).

        Parts of the window outside the mask read as ``False``.

        Raises
        ------
        WindowError
            If the window lies wholly outside the mask.
        """
        from glomseg.errors import WindowError

        if window is None:
            window = Window.from_shape(self.shape)
        inside = window.clip(self.shape)
        if inside is None:
            raise WindowError(f"window {window} lies outside the mask {self.shape}")
        data: NDArray[np.bool_] = np.asarray(self._array[inside.to_slices()]) != 0
        if inside == window:
            return data
        out = np.zeros(window.shape, dtype=np.bool_)
        out[inside.relative_to(window).to_slices()] = data
        return out

    def to_numpy(self) -> NDArray[np.bool_]:
        """The whole mask in memory (one byte a pixel: 1.4 GB for 31299 x 44066)."""
        return self.read()

    def iter_windows(self, size: int | None = None) -> Iterator[tuple[Window, NDArray[np.bool_]]]:
        """Yield ``(window, mask)`` over the mask in raster order of square windows.

        Parameters
        ----------
        size : int, optional
            Window side; default four chunks.
        """
        side = 4 * self.chunks[0] if size is None else _positive_int("size", size)
        h, w = self.shape
        for r in range(0, h, side):
            for c in range(0, w, side):
                win = Window.from_bounds(r, c, min(r + side, h), min(c + side, w))
                yield win, self.read(win)

    def count_nonzero(self) -> int:
        """Number of mask pixels."""
        return sum(int(np.count_nonzero(m)) for _, m in self.iter_windows())

    def thumbnail(self, shape: tuple[int, int]) -> NDArray[np.bool_]:
        """The mask sampled at the centres of a coarse grid of ``shape`` (``(h, w)``).

        Output pixel ``(i, j)`` is the mask at full-resolution pixel
        ``(floor((i + 0.5) * H / h), floor((j + 0.5) * W / w))``, the pixel-centre
        rule of :class:`glomseg.MaskRasterizer` at a downsample.
        """
        return _sample_mask(self, shape)

    # -- exports --------------------------------------------------------------------------
    def rle(self) -> str:
        """The Kaggle run-length encoding of the mask (column-major, 1-based).

        Computed band by band of columns with :func:`glomseg.rle_encode`, so
        only one band (about 64 MB) of the mask is in memory at a time.
        """
        return _rle_by_column_bands(self)

    def polygons(
        self, *, window: int = 4096, min_area: float = DEFAULT_SPECK_AREA
    ) -> list[Polygon]:
        """Trace the mask as polygons in slide coordinates, window by window.

        Each window is traced with :func:`glomseg.mask_to_polygons`; regions that
        reach across window borders are merged with :func:`shapely.unary_union`,
        so the result equals tracing the whole mask at once (4-connected regions,
        edges on pixel boundaries).

        Parameters
        ----------
        window : int
            Side of the windows traced at once.
        min_area : float
            Regions smaller than this (square full-resolution pixels) are dropped.

        Returns
        -------
        list of shapely.Polygon
            Sorted by their top, then left bound.
        """
        return _trace(self, window, min_area)

    def write_annotations(
        self,
        path: str | os.PathLike[str],
        *,
        window: int = 4096,
        min_area: float = DEFAULT_SPECK_AREA,
        classification: str = "glomerulus",
    ) -> list[Annotation]:
        """Write the mask's polygons as QuPath/HuBMAP JSON (see :meth:`polygons`).

        Returns
        -------
        list of Annotation
            What was written.
        """
        from glomseg._annotations import GLOMERULUS_COLOR

        color = GLOMERULUS_COLOR if classification == "glomerulus" else None
        annotations = [
            Annotation(p, classification=classification, color=color, properties={})
            for p in self.polygons(window=window, min_area=min_area)
        ]
        write_annotations(path, annotations)
        return annotations

    def to_tiff(
        self,
        path: str | os.PathLike[str],
        *,
        tile: int = 512,
        compression: TiffCompression = "deflate",
    ) -> Path:
        """Write the mask as a tiled single-channel TIFF of ``uint8`` 0/255, atomically.

        Values are 0 and 255 (not 0 and 1) so that image viewers show the mask;
        ``tifffile.imread(path) > 0`` gives the boolean mask back, and
        :class:`glomseg.SlideReader` opens it (as grey RGB). Tiles are streamed
        from the store one band of rows at a time.

        Parameters
        ----------
        path : str or os.PathLike
            The TIFF to write; replaced if it exists.
        tile : int
            Square TIFF tile size, a multiple of 16.
        compression : {"deflate", "packbits", "none"}
            TIFF codec.

        Returns
        -------
        Path
            ``path``.
        """
        import tifffile

        look_up_option("compression", compression, tuple(_TIFF_CODECS))
        tile = _positive_int("tile", tile, minimum=16)
        if tile % 16:
            raise ValueError(f"tile must be a multiple of 16, got {tile}")
        path = Path(path)
        h, w = self.shape

        def tiles() -> Iterator[NDArray[np.uint8]]:
            for r in range(0, h, tile):
                band = np.asarray(self._array[r : min(r + tile, h)])
                for c in range(0, w, tile):
                    block = np.zeros((tile, tile), dtype=np.uint8)
                    part = band[:, c : c + tile]
                    block[: part.shape[0], : part.shape[1]] = part
                    block *= 255
                    yield block

        with (
            atomic_path(path) as tmp,
            tifffile.TiffWriter(tmp, bigtiff=h * w > 2**32 - 2**25) as tw,
        ):
            tw.write(
                tiles(),
                shape=(h, w),
                dtype=np.uint8,
                tile=(tile, tile),
                compression=_TIFF_CODECS[compression],
                photometric="minisblack",
                metadata=None,
            )
        return path


MaskLike: TypeAlias = SlideMask | NDArray[Any] | str | os.PathLike[str]
"""A whole-slide mask: a :class:`SlideMask`, its folder, or an in-memory 2-D array."""


def _as_mask(mask: MaskLike) -> SlideMask | NDArray[Any]:
    if isinstance(mask, SlideMask):
        return mask
    if isinstance(mask, str | os.PathLike):
        return SlideMask(mask)
    array = np.asarray(mask)
    if array.ndim != 2 or (array.dtype != np.bool_ and array.dtype.kind not in "iu"):
        raise ValueError(
            f"a mask must be 2-D bool or integer, got {array.dtype} of shape {array.shape}"
        )
    return array


def _mask_shape(mask: SlideMask | NDArray[Any]) -> tuple[int, int]:
    return (int(mask.shape[0]), int(mask.shape[1]))


def _read_mask(mask: SlideMask | NDArray[Any], window: Window) -> NDArray[np.bool_]:
    if isinstance(mask, SlideMask):
        return mask.read(window)
    block: NDArray[np.bool_] = mask[window.to_slices()] != 0
    return block


def _create_store(
    path: Path, shape: tuple[int, int], chunk_size: int, attributes: dict[str, Any]
) -> zarr.Array[Any]:
    import zarr

    array = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(min(chunk_size, shape[0]), min(chunk_size, shape[1])),
        dtype="uint8",
        fill_value=0,
    )
    array.attrs[_ATTR] = {"version": 1, "shape": list(shape), **attributes}
    return array


def _is_mask_store(path: Path) -> bool:
    """Whether ``path`` holds a mask written by glomseg (and so may be replaced)."""
    try:
        array = _open_zarr(path)
    except Exception:  # anything that is not a mask store
        return False
    return _ATTR in array.attrs


class _atomic_dir:
    """Build a folder at a temporary path beside ``path``; rename it into place on success.

    An existing ``path`` is only replaced when it is an empty folder or a glomseg
    mask store, never any other folder.
    """

    def __init__(self, path: Path) -> None:
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        if path.is_dir() and any(path.iterdir()) and not _is_mask_store(path):
            raise FileExistsError(
                f"{path} exists and is not a glomseg mask store; not replacing it "
                "(remove it or choose another path)"
            )
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        try:
            if self.path.exists():
                old = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(self.path, old)
            os.replace(self.tmp, self.path)
        except BaseException:
            if old is not None:  # put the previous mask back
                os.replace(old, self.path)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# -- exports of a mask --------------------------------------------------------------------


def _column_band(mask: SlideMask | NDArray[Any]) -> int:
    h, w = _mask_shape(mask)
    band = max(1, _SCAN_BYTES // max(1, h))
    if isinstance(mask, SlideMask):
        chunk = mask.chunks[1]
        band = max(chunk, band // chunk * chunk)
    return min(band, w)


def _rle_by_column_bands(mask: SlideMask | NDArray[Any]) -> str:
    """Kaggle RLE of a mask too large for memory: :func:`rle_encode` on bands of columns.

    Column-major pixel numbers run down whole columns, so a band of columns
    ``[c0, c1)`` holds pixels ``c0 * H + 1 .. c1 * H``: its runs are the band's
    own runs shifted by ``c0 * H``, and a run that reaches the bottom of the
    band's last column joins one that starts at the top of the next band.
    """
    h, w = _mask_shape(mask)
    if h == 0 or w == 0:
        return ""
    step = _column_band(mask)
    starts: list[NDArray[np.int64]] = []
    lengths: list[NDArray[np.int64]] = []
    for c0 in range(0, w, step):
        window = Window(0, c0, h, min(step, w - c0))
        text = rle_encode(_read_mask(mask, window))
        if not text:
            continue
        numbers = np.array(text.split(), dtype=np.int64)
        s, n = numbers[0::2] + c0 * h, numbers[1::2]
        if starts and starts[-1][-1] + lengths[-1][-1] == s[0]:
            lengths[-1] = lengths[-1].copy()
            lengths[-1][-1] += n[0]
            s, n = s[1:], n[1:]
        if s.size:
            starts.append(s)
            lengths.append(n)
    if not starts:
        return ""
    all_starts, all_lengths = np.concatenate(starts), np.concatenate(lengths)
    pairs = np.empty(2 * all_starts.size, dtype=np.int64)
    pairs[0::2], pairs[1::2] = all_starts, all_lengths
    return " ".join(map(str, pairs.tolist()))


def _trace(mask: SlideMask | NDArray[Any], window: int, min_area: float) -> list[Polygon]:
    import shapely
    from shapely.geometry import MultiPolygon
    from shapely.geometry import Polygon as ShapelyPolygon

    side = _positive_int("window", window)
    if not (isinstance(min_area, int | float) and min_area >= 0):
        raise ValueError(f"min_area must be a number >= 0, got {min_area!r}")
    h, w = _mask_shape(mask)
    done: list[ShapelyPolygon] = []
    pending: list[ShapelyPolygon] = []
    for r in range(0, h, side):
        for c in range(0, w, side):
            win = Window.from_bounds(r, c, min(r + side, h), min(c + side, w))
            block = _read_mask(mask, win)
            for polygon in mask_to_polygons(block, offset=(r, c), min_area=0):
                x0, y0, x1, y1 = polygon.bounds
                crosses = (
                    (r > 0 and y0 <= r - 0.5)
                    or (c > 0 and x0 <= c - 0.5)
                    or (win.row_stop < h and y1 >= win.row_stop - 0.5)
                    or (win.col_stop < w and x1 >= win.col_stop - 0.5)
                )
                (pending if crosses else done).append(polygon)
    if pending:
        merged = shapely.unary_union(pending)
        parts = merged.geoms if isinstance(merged, MultiPolygon) else [merged]
        done.extend(p for p in parts if isinstance(p, ShapelyPolygon))
    kept = [p for p in done if p.area >= min_area and p.area > 0]
    kept.sort(key=lambda p: (p.bounds[1], p.bounds[0]))
    return kept


def _sample_mask(mask: SlideMask | NDArray[Any], shape: tuple[int, int]) -> NDArray[np.bool_]:
    h, w = _mask_shape(mask)
    th, tw = (
        _positive_int("shape[0]", shape[0]),
        _positive_int("shape[1]", shape[1]),
    )
    rows = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.int64), w - 1)
    out = np.zeros((th, tw), dtype=np.bool_)
    band = max(1, _SCAN_BYTES // max(1, w))
    for start in range(0, h, band):
        stop = min(start + band, h)
        picked = np.flatnonzero((rows >= start) & (rows < stop))
        if picked.size:
            block = _read_mask(mask, Window(start, 0, stop - start, w))
            out[picked] = block[rows[picked] - start][:, cols]
    return out


def write_submission_csv(path: str | os.PathLike[str], masks: Mapping[str, MaskLike]) -> Path:
    """Write a Kaggle submission CSV (``id,predicted``) for many slides, atomically.

    Each mask is run-length encoded band by band of columns (see
    :meth:`SlideMask.rle`), one slide at a time, and the rows go to
    :func:`glomseg.write_submission`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.csv`` to write.
    masks : mapping of str to mask
        Slide id to :class:`SlideMask`, its folder, or an in-memory 2-D mask,
        in the order to write.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import numpy as np
    >>> out = getfixture("tmp_path") / "submission.csv"
    >>> _ = write_submission_csv(out, {"aaa": np.eye(2, dtype=bool), "bbb": np.zeros((2, 2), int)})
    >>> print(out.read_text(), end="")
    id,predicted
    aaa,1 1 4 1
    bbb,
    """
    rows: list[tuple[str, str]] = []
    for slide_id, mask in masks.items():
        rows.append((slide_id, _rle_by_column_bands(_as_mask(mask))))
        logger.debug("encoded %s", slide_id)
    write_submission(path, rows)
    return Path(path)


# -- whole-slide Dice ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SlideDice:
    """The Dice score of one slide and the pixel counts it comes from.

    Attributes
    ----------
    dice : float
        ``2 |P & T| / (|P| + |T|)``, 1.0 when both are empty.
    intersection, predicted, truth : int
        ``|P & T|``, ``|P|`` and ``|T|`` in pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> pred = np.zeros((6, 6), dtype=bool)
    >>> pred[1:3, 1:5] = True  # 8 pixels, 6 of them in the truth
    >>> score = evaluate_slide(pred, [box(1, 1, 3, 2)])  # truth: rows 1-2, cols 1-3
    >>> score
    SlideDice(dice=0.857..., intersection=6, predicted=8, truth=6)
    """

    dice: float
    intersection: int
    predicted: int
    truth: int


@dataclass(frozen=True)
class DiceReport:
    """Per-slide Dice scores and their mean, the Kaggle HuBMAP score.

    Attributes
    ----------
    per_slide : dict of str to SlideDice
        In the order given.
    mean : float
        Mean of the per-slide Dice scores.

    Examples
    --------
    >>> import numpy as np
    >>> empty = np.zeros((4, 4), dtype=bool)
    >>> report = evaluate_slides({"a": (empty, []), "b": (~empty, [])})
    >>> report.per_slide["a"].dice, report.per_slide["b"].dice, report.mean
    (1.0, 0.0, 0.5)
    """

    per_slide: dict[str, SlideDice] = field(default_factory=dict)
    mean: float = float("nan")

    @property
    def pooled(self) -> float:
        """Dice pooled over the pixels of all slides, ``2 sum |P & T| / sum (|P| + |T|)``.

        1.0 when every mask is empty; NaN when there are no slides. Large slides
        weigh more than small ones, unlike :attr:`mean`.

        Examples
        --------
        >>> import numpy as np
        >>> from shapely.geometry import box
        >>> pred = np.zeros((6, 6), dtype=bool)
        >>> pred[1:3, 1:5] = True  # 8 pixels, 6 of them in the truth
        >>> empty = np.zeros((6, 6), dtype=bool)
        >>> report = evaluate_slides({"a": (pred, [box(1, 1, 3, 2)]), "b": (empty, [])})
        >>> round(report.mean, 3), round(report.pooled, 3)  # (0.857 + 1) / 2, and 12 / 14
        (0.929, 0.857)
        >>> evaluate_slides({"b": (empty, [])}).pooled
        1.0
        """
        if not self.per_slide:
            return float("nan")
        scores = self.per_slide.values()
        total = sum(s.predicted + s.truth for s in scores)
        return 2 * sum(s.intersection for s in scores) / total if total else 1.0


def _rasterizer(truth: object) -> MaskRasterizer:
    if isinstance(truth, MaskRasterizer):
        return truth
    if isinstance(truth, str | os.PathLike):
        return MaskRasterizer(read_annotations(truth))
    if isinstance(truth, Iterable):
        return MaskRasterizer(truth)
    raise TypeError(
        "truth must be an annotation JSON path, a MaskRasterizer or an iterable of "
        f"geometries, got {type(truth).__name__}"
    )


def evaluate_slide(
    prediction: MaskLike,
    truth: str | os.PathLike[str] | MaskRasterizer | Iterable[object],
    *,
    window: int = 4096,
) -> SlideDice:
    """Score a predicted slide mask against annotation polygons, window by window.

    The truth is rasterized one window at a time with
    :class:`glomseg.MaskRasterizer` (pixel-centre rule), and the counts of the
    windows are summed, so no full-size truth mask is ever made. The result
    equals :func:`glomseg.dice_coefficient` of the prediction and the full
    rasterized truth.

    Parameters
    ----------
    prediction : SlideMask, path or numpy.ndarray
        The predicted full-resolution mask.
    truth : path, MaskRasterizer or iterable of geometries
        The annotation JSON of the slide, or its polygons.
    window : int
        Side of the windows compared at once.

    Returns
    -------
    SlideDice

    Examples
    --------
    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> pred = np.zeros((10, 10), dtype=bool)
    >>> pred[1:4, 1:4] = True
    >>> evaluate_slide(pred, [box(1, 1, 3, 3)], window=4)  # truth: pixels 1..3
    SlideDice(dice=1.0, intersection=9, predicted=9, truth=9)
    """
    mask = _as_mask(prediction)
    rasterizer = _rasterizer(truth)
    side = _positive_int("window", window)
    h, w = _mask_shape(mask)
    both = predicted = actual = 0
    for r in range(0, h, side):
        for c in range(0, w, side):
            win = Window.from_bounds(r, c, min(r + side, h), min(c + side, w))
            p = _read_mask(mask, win)
            t = rasterizer.rasterize(win)
            both += int(np.count_nonzero(p & t))
            predicted += int(np.count_nonzero(p))
            actual += int(np.count_nonzero(t))
    total = predicted + actual
    dice = 1.0 if total == 0 else 2.0 * both / total
    return SlideDice(dice, both, predicted, actual)


def evaluate_slides(
    pairs: Mapping[str, tuple[MaskLike, str | os.PathLike[str] | MaskRasterizer]],
    *,
    window: int = 4096,
) -> DiceReport:
    """Score many slides with :func:`evaluate_slide` and average, as Kaggle does.

    Parameters
    ----------
    pairs : mapping of str to (prediction, truth)
        Slide id to its predicted mask and its annotations.
    window : int
        Side of the windows compared at once.

    Returns
    -------
    DiceReport

    Examples
    --------
    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> full = np.ones((4, 4), dtype=bool)
    >>> report = evaluate_slides({"a": (full, [box(0, 0, 3, 3)]), "b": (full, [])})
    >>> report.per_slide["a"].dice, report.per_slide["b"].dice, report.mean
    (1.0, 0.0, 0.5)
    """
    if not pairs:
        raise ValueError("evaluate_slides needs at least one slide")
    scores = {key: evaluate_slide(p, t, window=window) for key, (p, t) in pairs.items()}
    mean = float(np.mean([s.dice for s in scores.values()]))
    return DiceReport(scores, mean)


# -- overlay ------------------------------------------------------------------------------------


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
    with atomic_path(out) as tmp:
        Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return out


# -- prediction -----------------------------------------------------------------------------------


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _put(q: queue.Queue[Any], item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; return whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


class _TileReader(threading.Thread):
    """Read the slide band by band at prediction resolution and queue its tiles."""

    def __init__(
        self,
        reader: SlideReader,
        stitcher: BandStitcher,
        config: PredictConfig,
        out: queue.Queue[Any],
        slots: threading.Semaphore,
        stop: threading.Event,
        stats: PredictionStats,
    ) -> None:
        super().__init__(name="glomseg-tile-reader", daemon=True)
        self.slots = slots
        self.reader = reader
        self.stitcher = stitcher
        self.config = config
        self.out = out
        self.stop = stop
        self.stats = stats
        ds = config.downsample
        assert ds is not None
        self.downsample = ds
        levels = reader.level_downsamples[1:]
        # With a pyramid level at or below the downsample, let the reader resample from it.
        self.use_reader_resampling = ds > 1 and any(d <= ds * (1 + 1e-3) for d in levels)

    def run(self) -> None:
        try:
            self._run()
            _put(self.out, _END, self.stop)
        except BaseException as error:  # handed to the calling thread
            _put(self.out, _Failure(error), self.stop)

    def _load(self, image: NDArray[np.uint8], start: int, stop: int) -> None:
        """Read prediction rows ``[start, stop)`` into ``image`` (rows relative to ``start``)."""
        ds = self.downsample
        width = self.stitcher.shape[1]
        if not isinstance(ds, int):  # a fractional footprint: exact area average
            per_row = math.ceil(width * ds + 1) * math.ceil(max(ds, 1.0) + 1) * 3
            step = max(1, _READ_BYTES // per_row)
            cols = _edges(0, width, ds)
            for r in range(start, stop, step):
                n = min(step, stop - r)
                block = self.reader._read_area(_edges(r, r + n, ds), cols)
                image[r - start : r - start + n, :width] = block
            return
        per_row = width * ds * ds * 3
        step = max(1, _READ_BYTES // per_row)
        for r in range(start, stop, step):
            n = min(step, stop - r)
            window = Window(r * ds, 0, n * ds, width * ds)
            if self.use_reader_resampling:
                block = self.reader.read(window, out_shape=(n, width))
            else:
                block = _block_mean(self.reader.read(window), ds)
            image[r - start : r - start + n, :width] = block

    def _run(self) -> None:
        st, cfg = self.stitcher, self.config
        t = st.tile_size
        height = st.shape[0]
        band = np.full((t, st.padded_shape[1], 3), 255, dtype=np.uint8)
        tissue = np.zeros((t, st.padded_shape[1]), dtype=np.bool_)
        min_pixels = cfg.min_tissue * t * t
        top = loaded = 0
        for i, origin in enumerate(st.row_origins):
            if self.stop.is_set():
                return
            begin = time.perf_counter()
            shift = origin - top
            if shift >= t:
                band[:] = 255
                tissue[:] = False
            elif shift:
                band[: t - shift] = band[shift:]
                band[t - shift :] = 255
                tissue[: t - shift] = tissue[shift:]
                tissue[t - shift :] = False
            top = origin
            start, stop = max(loaded, origin), min(origin + t, height)
            if stop > start:
                rows = slice(start - origin, stop - origin)
                self._load(band[rows], start, stop)
                if cfg.skip_background:
                    tissue[rows] = tissue_pixels(
                        band[rows], saturation_threshold=cfg.saturation_threshold
                    )
                loaded = stop
            self.stats.read_s += time.perf_counter() - begin
            for j, col in enumerate(st.col_origins):
                begin = time.perf_counter()
                tile: NDArray[np.uint8] | None = None
                if (
                    not cfg.skip_background
                    or np.count_nonzero(tissue[:, col : col + t]) > min_pixels
                ):
                    tile = band[:, col : col + t].copy()  # the band changes later
                self.stats.read_s += time.perf_counter() - begin
                # Only tiles to predict take a prefetch slot: the reader runs through
                # glass, building a lead, while the predictor works on tissue.
                if tile is not None and not self._acquire():
                    return
                if not _put(self.out, (i, j, tile), self.stop):
                    return

    def _acquire(self) -> bool:
        while not self.stop.is_set():
            if self.slots.acquire(timeout=_POLL_S):
                return True
        return False


class _MaskWriter(threading.Thread):
    """Blend predicted tiles; normalise, threshold, upsample and write final rows, in order.

    Items are ``(keys, probs)`` for a batch of tiles (``keys`` their grid
    positions, in raster order) and finally ``_END``.
    """

    def __init__(
        self,
        store: zarr.Array[Any],
        stitcher: BandStitcher,
        config: PredictConfig,
        full_shape: tuple[int, int],
        stats: PredictionStats,
    ) -> None:
        super().__init__(name="glomseg-mask-writer", daemon=True)
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.store = store
        self.stitcher = stitcher
        self.config = config
        self.full_shape = full_shape
        self.stats = stats
        self.error: BaseException | None = None
        self.abort = threading.Event()
        self.pending: list[NDArray[np.uint8]] = []
        self.pending_rows = 0
        self.written = 0
        self.chunk_rows = int(store.chunks[0])
        self.current = -1
        assert config.downsample is not None
        self.downsample: int | float = config.downsample
        self.next_row = 0  # the next full-resolution row to hand to the store
        if not isinstance(self.downsample, int):
            self.cols = _centres(0, full_shape[1], self.downsample, stitcher.shape[1])

    def run(self) -> None:
        try:
            while not self.abort.is_set():
                try:
                    item = self.inbox.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if self.abort.is_set():
                    return
                if item is _END:
                    self._advance(len(self.stitcher.row_origins) - 1)
                    begin = time.perf_counter()
                    start, sums = self.stitcher.finish()
                    self.stats.stitch_s += time.perf_counter() - begin
                    self._band(start, sums)
                    self._flush(final=True)
                    return
                keys, probs = item
                for (i, j), p in zip(keys, probs, strict=True):
                    self._advance(i)
                    begin = time.perf_counter()
                    self.stitcher.add(i, j, p)
                    self.stats.stitch_s += time.perf_counter() - begin
        except BaseException as error:  # handed to the calling thread
            self.error = error

    def _advance(self, to_row: int) -> None:
        """Start grid rows up to ``to_row``, writing the rows that become final."""
        while self.current < to_row:
            self.current += 1
            begin = time.perf_counter()
            start, sums = self.stitcher.start_row(self.current)
            self.stats.stitch_s += time.perf_counter() - begin
            self._band(start, sums)

    def _band(self, start: int, sums: NDArray[np.float32]) -> None:
        if not sums.shape[0]:
            return
        begin = time.perf_counter()
        ds = self.downsample
        h, w = self.full_shape
        probs = self.stitcher.normalise(start, sums)
        mask = (probs > np.float32(self.config.threshold)).view(np.uint8)
        stop = start + mask.shape[0]
        if isinstance(ds, int):
            rows = min(stop * ds, h) - start * ds
            if ds > 1:
                mask = np.repeat(np.repeat(mask, ds, axis=0)[:rows], ds, axis=1)[:, :w]
        else:
            # Full-resolution rows whose centres fall in prediction rows [start, stop).
            last = h if stop == self.stitcher.shape[0] else min(h, math.ceil(stop * ds) + 1)
            owner = _centres(self.next_row, last, ds, self.stitcher.shape[0])
            owner = owner[owner < stop]
            rows = len(owner)
            mask = mask[owner - start][:, self.cols]
        self.next_row += rows
        self.pending.append(np.ascontiguousarray(mask))
        self.pending_rows += rows
        self.stats.stitch_s += time.perf_counter() - begin
        self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self.pending_rows:
            return
        n = self.pending_rows if final else self.pending_rows // self.chunk_rows * self.chunk_rows
        if n == 0:
            return
        begin = time.perf_counter()
        block = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.store[self.written : self.written + n] = block[:n]
        self.written += n
        rest = block[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]
        self.stats.write_s += time.perf_counter() - begin

    def send(self, item: object) -> None:
        """Queue an item; raise the writer's error if it failed."""
        while True:
            if self.error is not None:
                raise self.error
            if not self.is_alive():
                if self.error is not None:  # it failed after the check above
                    raise self.error
                raise RuntimeError("the mask writer thread stopped unexpectedly")
            try:
                self.inbox.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue


def predict_slide(
    slide: SlideReader | str | os.PathLike[str],
    model: Predictor,
    out: str | os.PathLike[str] | None = None,
    *,
    config: PredictConfig | None = None,
    pixel_size_um: float | None = None,
    stain: bool = True,
    stain_normalizer: Any = None,
    progress: bool = True,
) -> SlideMask:
    """Predict a whole slide with blended, overlapping tiles into a full-resolution mask.

    See the module documentation for the pipeline (a reader thread, the
    predictor in the calling thread, a writer thread) and its memory bound.

    Parameters
    ----------
    slide : SlideReader or path
        The slide (a path is opened and closed here).
    model : Predictor
        ``(n, t, t, 3) uint8 -> (n, t, t)`` probabilities in ``[0, 1]``, with
        ``t`` the tile size; for example a :class:`glomseg.GlomUNet`. Where it
        has them, its ``config`` (``input_size``, ``pixel_size_um``,
        ``downsample``) sets the tile size and downsample that ``config`` leaves
        ``None`` (see :func:`glomseg.resolve_scale`), and its
        ``stain_normalizer`` normalises each tile.
    out : str or os.PathLike, optional
        The ``.zarr`` folder of the mask; an existing one is replaced when the
        run succeeds. Default: a temporary folder, deleted with the returned
        object.
    config : PredictConfig, optional
        Tiling, scale, blending, TTA, threshold and background options.
    pixel_size_um : float, optional
        Micrometres per full-resolution pixel of the slide, > 0; default
        :attr:`SlideReader.pixel_size_um` (from the file's metadata). With the
        model's pixel size it sets the downsample, unless ``config`` does.
    stain : bool
        Pass each tile (after background detection, before TTA) through the
        stain normaliser's ``transform(image) -> image``; False turns it off.
    stain_normalizer : object, optional
        A normaliser to use instead of ``model.stain_normalizer``.
    progress : bool
        Show a tqdm progress bar of tiles on stderr.

    Returns
    -------
    SlideMask
        The mask, with the run's timings in :attr:`SlideMask.stats`; its
        :attr:`~SlideMask.attributes` record the resolved config, the
        ``downsample`` and the input's ``pixel_size_um``.

    Raises
    ------
    SlideReadError
        If the slide cannot be read.
    ValueError, TypeError
        If the predictor returns the wrong shape or values outside ``[0, 1]``,
        or a pixel size is not a finite number > 0.

    Examples
    --------
    A colour rule as the model, on a small synthetic slide:

    >>> import numpy as np
    >>> from glomseg.synthetic import write_synthetic_slide
    >>> tmp = getfixture("tmp_path")
    >>> slide = write_synthetic_slide(tmp / "s.tif", (300, 400), seed=3)
    >>> def purple(batch: np.ndarray) -> np.ndarray:
    ...     return (batch[..., 1] < 150).astype(np.float32)
    >>> mask = predict_slide(slide.path, purple, tmp / "s.zarr",
    ...                      config=PredictConfig(tile_size=64, downsample=2), progress=False)
    >>> mask.shape, mask.stats.tiles, mask.stats.predicted + mask.stats.skipped
    ((300, 400), 12, 12)

    A model trained on 1 um pixels, on this slide scanned at 0.4 um: the
    downsample is 2.5.

    >>> from types import SimpleNamespace
    >>> purple.config = SimpleNamespace(input_size=64, pixel_size_um=1.0, downsample=2)
    >>> mask = predict_slide(slide.path, purple, pixel_size_um=0.4, progress=False)
    >>> mask.shape, mask.attributes["downsample"], mask.attributes["pixel_size_um"]
    ((300, 400), 2.5, 0.4)
    """
    cfg = PredictConfig() if config is None else config
    if not isinstance(cfg, PredictConfig):
        raise TypeError(f"config must be a PredictConfig, got {type(cfg).__name__}")
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    normalizer = _stain_normalizer(model, stain, stain_normalizer)
    if isinstance(slide, SlideReader):
        if slide.closed:
            from glomseg.errors import SlideReadError

            raise SlideReadError(f"{slide.path}: the reader is closed")
        return _predict(slide, model, out, cfg, pixel_size_um, normalizer, progress)
    # Bands are read once, top to bottom: a small segment cache suffices.
    with SlideReader(slide, cache_bytes=_CACHE_BYTES) as reader:
        return _predict(reader, model, out, cfg, pixel_size_um, normalizer, progress)


def _predict(
    reader: SlideReader,
    predictor: Predictor,
    out: str | os.PathLike[str] | None,
    cfg: PredictConfig,
    pixel_size_um: float | None,
    normalizer: Any,
    progress: bool,
) -> SlideMask:
    from tqdm import tqdm

    wall = time.perf_counter()
    if pixel_size_um is None and cfg.downsample is None:
        pixel_size_um = reader.pixel_size_um
    tile_size, ds = resolve_scale(predictor, pixel_size_um, config=cfg)
    cfg = replace(cfg, tile_size=tile_size, downsample=ds)
    full_shape = reader.shape
    stitcher = BandStitcher(
        prediction_shape(full_shape, ds),
        tile_size,
        cfg.grid_stride,
        edge=cfg.edge,
        blending=cfg.blending,
    )
    stats = PredictionStats(tiles=math.prod(stitcher.grid_shape))
    temporary = out is None
    target = Path(tempfile.mkdtemp(prefix="glomseg-")) / "mask.zarr" if out is None else Path(out)
    model = _tile_model(predictor, normalizer, cfg.tta)
    attributes = {
        "source": str(reader.path),
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "downsample": ds,
        "pixel_size_um": pixel_size_um,
    }
    logger.info(
        "predicting %s: %d tiles of %d px at downsample %g, band of %.0f MB",
        reader.path,
        stats.tiles,
        tile_size,
        ds,
        stitcher.band_bytes / 1e6,
    )
    try:
        with _atomic_dir(target) as tmp:
            store = _create_store(tmp, full_shape, cfg.chunk_size, attributes)
            tiles: queue.Queue[Any] = queue.Queue()
            slots = threading.Semaphore(cfg.prefetch)
            stop = threading.Event()
            tile_reader = _TileReader(reader, stitcher, cfg, tiles, slots, stop, stats)
            writer = _MaskWriter(store, stitcher, cfg, full_shape, stats)
            bar = tqdm(total=stats.tiles, unit="tile", disable=not progress, desc="predict")
            tile_reader.start()
            writer.start()
            try:
                _drive(model, stitcher, cfg, tiles, slots, tile_reader, writer, stats, bar)
                writer.send(_END)
                writer.join()
                if writer.error is not None:
                    raise writer.error
            finally:
                stop.set()
                bar.close()
                tile_reader.join()
                if writer.is_alive():
                    writer.abort.set()
                    writer.join()
    except BaseException:
        if temporary:  # the folder made above for the mask
            shutil.rmtree(target.parent, ignore_errors=True)
        raise
    stats.wall_s = time.perf_counter() - wall
    mask = SlideMask(target)
    mask._stats = stats
    if temporary:
        mask._finalizer = weakref.finalize(mask, shutil.rmtree, target.parent, True)
    logger.info(
        "predicted %s in %.1f s: %d tiles predicted, %d skipped",
        reader.path,
        stats.wall_s,
        stats.predicted,
        stats.skipped,
    )
    return mask


def _drive(
    model: Predictor,
    stitcher: BandStitcher,
    cfg: PredictConfig,
    tiles: queue.Queue[Any],
    slots: threading.Semaphore,
    tile_reader: _TileReader,
    writer: _MaskWriter,
    stats: PredictionStats,
    bar: Any,
) -> None:
    """The calling thread's loop: batch tiles, predict, hand predictions to the writer."""
    t = stitcher.tile_size
    batch: list[tuple[int, int, NDArray[np.uint8]]] = []

    def run_batch() -> None:
        if not batch:
            return
        begin = time.perf_counter()
        images = np.stack([image for _, _, image in batch])
        probs = check_probabilities(model(images), len(batch), (t, t))
        stats.predict_s += time.perf_counter() - begin
        begin = time.perf_counter()
        writer.send(([(i, j) for i, j, _ in batch], probs))
        stats.write_wait_s += time.perf_counter() - begin
        stats.predicted += len(batch)
        bar.update(len(batch))
        batch.clear()

    while True:
        begin = time.perf_counter()
        while True:
            try:
                item = tiles.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not tile_reader.is_alive() and tiles.empty():
                    raise RuntimeError("the tile reader thread stopped unexpectedly") from None
        stats.read_wait_s += time.perf_counter() - begin
        if item is _END:
            break
        if isinstance(item, _Failure):
            raise item.error
        i, j, image = item
        if image is None:
            stats.skipped += 1
            bar.update(1)
            continue
        slots.release()
        batch.append((i, j, image))
        if len(batch) >= cfg.batch_size:
            run_batch()
    run_batch()
