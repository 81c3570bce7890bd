"""The full-resolution mask on disk that :func:`glomseg.predict_slide` writes, and its exports.

A :class:`SlideMask` is a chunked zarr array read lazily, window by window. It
exports Kaggle RLE (:meth:`SlideMask.rle`, band by band of columns), QuPath
polygons (:meth:`SlideMask.write_annotations`, traced window by window) and a
tiled TIFF (:meth:`SlideMask.to_tiff`); :func:`write_submission_csv` writes the
RLE of many slides. Masks are built in a temporary folder beside their path and
renamed into place, so a failed run never leaves a half-written one.
"""

from __future__ import annotations

import logging
import os
import shutil
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from glomseg.annotations._annotations import Annotation, write_annotations
from glomseg.annotations._rasterize import DEFAULT_SPECK_AREA, mask_to_polygons
from glomseg.annotations._rle import rle_encode, write_submission
from glomseg.errors import look_up_option
from glomseg.io._files import atomic_path, partial_path, remove_stale_partials
from glomseg.io._window import Window
from glomseg.predict._predict_config import PredictionStats
from glomseg.tiles._tiling import _positive_int

if TYPE_CHECKING:
    import zarr
    from shapely.geometry import Polygon

__all__ = ["MaskLike", "SlideMask", "write_submission_csv"]

logger = logging.getLogger(__name__)

TiffCompression = Literal["deflate", "packbits", "none"]
_TIFF_CODECS: dict[str, str | None] = {"deflate": "zlib", "packbits": "packbits", "none": None}

#: Bytes of mask read at once when scanning a :class:`SlideMask`.
_SCAN_BYTES = 64 * 2**20
#: The zarr attribute that marks a glomseg mask and holds its metadata.
_ATTR = "glomseg_mask"


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

    The mask is a chunked zarr array of ``uint8`` 0/1 (zstd-compressed; of each
    band of chunks, only the span of columns that holds mask pixels is stored),
    as written by :func:`predict_slide`. Reads return ``bool``.

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
                _write_rows(store, start, (array[start : start + band] != 0).view(np.uint8))
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
        from glomseg.annotations._annotations import GLOMERULUS_COLOR

        color = GLOMERULUS_COLOR if classification == "glomerulus" else None
        annotations = [
            Annotation(p, classification=classification, color=color, properties={})
            for p in self.polygons(window=window, min_area=min_area)
        ]
        write_annotations(path, annotations)
        return annotations

    def to_ome_tiff(
        self,
        path: str | os.PathLike[str],
        *,
        pyramid: bool = True,
        tile: int = 512,
        compression: TiffCompression = "deflate",
        pixel_size_um: float | None = None,
    ) -> Path:
        """Write the mask as a tiled, pyramidal OME-TIFF for QuPath and napari, atomically.

        Level 0 is the mask at the slide's full resolution as ``uint8`` 0/255;
        each further level halves the one before (a pixel is 255 where any pixel
        of its block is, so small glomeruli stay visible zoomed out), down to
        one tile, stored as SubIFDs as the OME-TIFF pyramid convention has it.
        The OME-XML holds the physical pixel size. Tiles are streamed from the
        store, one band of rows at a time, so memory does not grow with the
        slide.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (``.ome.tif`` by convention); replaced if it exists.
        pyramid : bool
            Write the lower-resolution levels too.
        tile : int
            Square tile size, a multiple of 16.
        compression : {"deflate", "packbits", "none"}
            TIFF codec.
        pixel_size_um : float, optional
            Micrometres per pixel; default the ``pixel_size_um`` that
            :func:`glomseg.predict_slide` stored with the mask. Without either,
            the file has no physical size.

        Returns
        -------
        Path
            ``path``.

        Examples
        --------
        >>> import numpy as np, tifffile
        >>> mask = SlideMask.from_array(np.eye(1000, dtype=bool), getfixture("tmp_path") / "m")
        >>> path = mask.to_ome_tiff(getfixture("tmp_path") / "m.ome.tif", pixel_size_um=0.5)
        >>> with tifffile.TiffFile(path) as tif:
        ...     [level.shape for level in tif.series[0].levels], tif.is_ome
        ([(1000, 1000), (500, 500)], True)
        """
        from glomseg.predict._ome import write_ome_tiff

        tile = _tiff_tile(tile, compression)
        size = self.attributes.get("pixel_size_um") if pixel_size_um is None else pixel_size_um
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int | float) or not 0 < size < 1e6
        ):
            raise ValueError(f"pixel_size_um must be a number > 0, got {size!r}")
        return write_ome_tiff(
            self._array,
            Path(path),
            pixel_size_um=None if size is None else float(size),
            pyramid=pyramid,
            tile=tile,
            compression=_TIFF_CODECS[compression],
            name=Path(self.attributes.get("source") or self.path).name,
        )

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

        from glomseg.predict._ome import mask_tiles

        tile = _tiff_tile(tile, compression)
        path = Path(path)
        h, w = self.shape
        with (
            atomic_path(path, clean=True) as tmp,
            tifffile.TiffWriter(tmp, bigtiff=h * w > 2**32 - 2**25) as tw,
        ):
            tw.write(
                mask_tiles(self._array, (h, w), 1, tile),
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
        # _write_rows decides which chunks to write: zarr's own test for empty chunks
        # costs more than writing them (4x on a band of zeros).
        config={"write_empty_chunks": True},
    )
    array.attrs[_ATTR] = {"version": 1, "shape": list(shape), **attributes}
    return array


def _write_rows(
    store: zarr.Array[Any], start: int, rows: NDArray[np.uint8], *, col0: int = 0
) -> None:
    """Write mask rows from row ``start``, column ``col0``: only the chunk columns with a 1.

    ``col0`` must be a multiple of the chunk width, and ``rows`` must end at a
    chunk boundary or at the mask's right edge. Chunks left out stay unwritten
    and read as 0, so background costs no disk.
    """
    hits = np.flatnonzero(rows.any(axis=0))
    if not hits.size:
        return
    chunk = int(store.chunks[1])
    c0 = int(hits[0]) // chunk * chunk
    c1 = min(rows.shape[1], (int(hits[-1]) // chunk + 1) * chunk)
    store[start : start + rows.shape[0], col0 + c0 : col0 + c1] = rows[:, c0:c1]


def _is_mask_store(path: Path) -> bool:
    """Whether ``path`` holds a mask written by glomseg (and so may be replaced)."""
    try:
        array = _open_zarr(path)
    except Exception:  # anything that is not a mask store
        return False
    return _ATTR in array.attrs


def _tiff_tile(tile: int, compression: str) -> int:
    """``tile`` checked as a TIFF tile size (a multiple of 16), after ``compression``."""
    look_up_option("compression", compression, tuple(_TIFF_CODECS))
    tile = _positive_int("tile", tile, minimum=16)
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    return tile


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
        self.tmp = partial_path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)  # of runs killed before they could clean up
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        try:
            if self.path.exists():
                old = partial_path(self.path)
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

    def rows() -> Iterator[tuple[str, str]]:  # one slide's RLE in memory at a time
        for slide_id, mask in masks.items():
            yield slide_id, _rle_by_column_bands(_as_mask(mask))
            logger.debug("encoded %s", slide_id)

    write_submission(path, rows())
    return Path(path)
