"""Blended sliding-window stitching: the pure core of whole-slide prediction.

A *predictor* is any callable that maps a batch of ``uint8`` RGB tiles
``(n, h, w, 3)`` to probabilities ``(n, h, w)`` in ``[0, 1]``
(:class:`Predictor`); nothing here needs TensorFlow, as with MONAI's
``sliding_window_inference``. Tiles overlap, and every pixel's probability is
the weighted mean of the predictions of the tiles that cover it.

Blending weights
----------------
The weight of a tile is separable, ``w(r, c) = p_row(r) * p_col(c)``, with one
1-D profile per grid row and per grid column:

``"gaussian"``
    ``exp(-(x - centre)^2 / (2 sigma^2))`` with ``sigma = tile_size / 8``,
    scaled to a maximum of 1 and floored at ``1e-3`` so that a tile's border
    pixels still count (a pixel that only one tile covers keeps that tile's value).
``"mean"``
    All ones: the plain average of the overlapping predictions.
``"crop"``
    Centre crop: weight 1 in the central ``stride`` pixels of each tile and 0
    in its margins, except that the first and last tiles along an axis keep
    their outer margins, so every pixel has a positive weight. Without blending,
    each pixel takes the prediction of the tile whose centre region holds it
    (the average of two where regions overlap at a shifted last tile).

Because all tiles of the grid count (a skipped background tile contributes
probability 0 with its weight), the sum of weights at a pixel is the outer
product of two 1-D sums, and only the weighted probability sums are stored.

Memory
------
:class:`BandStitcher` keeps one band of ``tile_size`` rows by the full width:
the rows above the current grid row are final and are handed out by
:meth:`BandStitcher.start_row`, so memory is O(width x tile), never O(slide).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import look_up_option
from glomseg.tiles._tiling import Tiler

__all__ = [
    "BandStitcher",
    "Blending",
    "GridEdge",
    "Predictor",
    "blend_profile",
    "check_probabilities",
    "flip_tta",
    "sliding_window_predict",
]

#: Bytes of float32 sums divided at once, to stay in the CPU's cache.
_SLAB_BYTES = 256 * 2**10

logger = logging.getLogger(__name__)

Blending = Literal["gaussian", "mean", "crop"]
"""How overlapping tile predictions are weighted: see the module notes."""

GridEdge = Literal["shift", "pad"]
"""Where the last tile along an axis goes: ending at the edge, or past it (padded)."""

BLENDINGS: tuple[str, ...] = get_args(Blending)
GRID_EDGES: tuple[str, ...] = get_args(GridEdge)

#: Floor of the 1-D gaussian profile (the 2-D weight is at least its square).
GAUSSIAN_FLOOR = 1e-3


@runtime_checkable
class Predictor(Protocol):
    """A model seen as a function from tiles to probabilities.

    ``predictor(batch)`` takes ``uint8`` RGB tiles of shape ``(n, h, w, 3)`` and
    returns probabilities of shape ``(n, h, w)`` in ``[0, 1]`` (any float dtype).
    ``GlomUNet.predict`` satisfies it, and so does any plain function.

    Examples
    --------
    >>> import numpy as np
    >>> def redness(batch: np.ndarray) -> np.ndarray:
    ...     return batch[..., 0].astype(np.float32) / 255
    >>> isinstance(redness, Predictor)
    True
    """

    def __call__(self, batch: NDArray[np.uint8], /) -> NDArray[np.floating[Any]]:
        """Return the probabilities of a batch of tiles."""
        ...


def _default_stride(tile_size: int) -> int:
    """The default grid step of a tile side: ``tile_size * 3 // 4``, a quarter overlap (>= 1)."""
    return max(1, tile_size * 3 // 4)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def check_probabilities(probs: object, n: int, shape: tuple[int, int]) -> NDArray[np.float32]:
    """Check a predictor's output for ``n`` tiles of ``shape`` and return it as float32.

    Parameters
    ----------
    probs : array_like
        What the predictor returned.
    n : int
        The number of tiles in the batch.
    shape : (int, int)
        The tiles' ``(height, width)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` of shape ``(n, *shape)``.

    Raises
    ------
    ValueError
        If the shape is wrong, or a value lies outside ``[0, 1]`` or is NaN.
    TypeError
        If the output is not an array of real values.

    Examples
    --------
    >>> import numpy as np
    >>> check_probabilities(np.full((1, 2, 2), 0.5), 1, (2, 2)).dtype
    dtype('float32')
    >>> check_probabilities(np.zeros((1, 2, 3)), 1, (2, 2))
    Traceback (most recent call last):
    ...
    ValueError: the predictor must return shape (1, 2, 2) for 1 tiles of (2, 2), got (1, 2, 3)
    """
    try:
        array = np.asarray(probs)
    except (TypeError, ValueError) as exc:  # e.g. a ragged list
        raise TypeError(
            f"the predictor must return an array of probabilities, got {type(probs).__name__} "
            f"that is not one ({exc})"
        ) from exc
    if array.dtype.kind not in "fiub":
        raise TypeError(f"the predictor must return real probabilities, got dtype {array.dtype}")
    expected = (n, *shape)
    if array.shape != expected:
        raise ValueError(
            f"the predictor must return shape {expected} for {n} tiles of {shape}, "
            f"got {array.shape}"
        )
    out = array.astype(np.float32, copy=False)
    if out.size and not (float(out.min()) >= 0.0 and float(out.max()) <= 1.0):
        raise ValueError("the predictor must return probabilities in [0, 1] (and no NaN)")
    return out


def flip_tta(predictor: Predictor) -> Predictor:
    """Wrap a predictor in flip test-time augmentation.

    The wrapped predictor averages the predictions of the tiles as given,
    flipped left-right, flipped up-down and flipped both ways, each flipped back
    before averaging. It calls ``predictor`` four times with batches of the
    same size as its input.

    Parameters
    ----------
    predictor : Predictor
        The model to wrap.

    Returns
    -------
    Predictor
        A predictor with the same signature.

    Examples
    --------
    A flip-equivariant predictor (a per-pixel rule) is unchanged:

    >>> import numpy as np
    >>> def red(batch: np.ndarray) -> np.ndarray:
    ...     return batch[..., 0] / np.float32(255)
    >>> tiles = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    >>> bool(np.allclose(flip_tta(red)(tiles), red(tiles)))
    True
    """

    def predict(batch: NDArray[np.uint8], /) -> NDArray[np.floating[Any]]:
        n, h, w = batch.shape[:3]
        total = check_probabilities(predictor(batch), n, (h, w)).astype(np.float32, copy=True)
        for axes in ((2,), (1,), (1, 2)):
            flipped = np.ascontiguousarray(np.flip(batch, axis=axes))
            probs = check_probabilities(predictor(flipped), n, (h, w))
            total += np.flip(probs, axis=axes)
        total *= np.float32(0.25)
        return total

    predict.__name__ = f"flip_tta({getattr(predictor, '__name__', type(predictor).__name__)})"
    return predict


def grid_origins(length: int, tile_size: int, stride: int, edge: GridEdge) -> list[int]:
    """Tile origins along one axis of ``length`` pixels (see :class:`glomseg.Tiler`).

    Examples
    --------
    >>> grid_origins(10, 4, 3, "shift"), grid_origins(10, 4, 3, "pad")
    ([0, 3, 6], [0, 3, 6])
    >>> grid_origins(11, 4, 3, "shift"), grid_origins(11, 4, 3, "pad")
    ([0, 3, 6, 7], [0, 3, 6, 9])
    """
    tiler = Tiler(tile_size, stride, edge=edge)
    return [t.window.row for t in tiler.iter_tiles((length, tile_size))]


def blend_profile(
    origins: Sequence[int], tile_size: int, stride: int, blending: Blending
) -> NDArray[np.float32]:
    """The 1-D blending profiles of the tiles along one axis.

    Parameters
    ----------
    origins : sequence of int
        Tile origins along the axis, increasing (from :func:`grid_origins`).
    tile_size, stride : int
        Tile side and grid step, ``stride <= tile_size``.
    blending : {"gaussian", "mean", "crop"}
        See the module notes.

    Returns
    -------
    numpy.ndarray
        ``float32`` of shape ``(len(origins), tile_size)``: row ``i`` is the
        weight profile of the ``i``-th tile, all values in ``[0, 1]``.

    Examples
    --------
    >>> blend_profile([0, 2, 4], 4, 2, "crop").astype(int)
    array([[1, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 1, 1, 1]])
    >>> p = blend_profile([0, 2], 8, 2, "gaussian")
    >>> float(p.max()) <= 1.0 and float(p.min()) >= 1e-3
    True
    """
    look_up_option("blending", blending, BLENDINGS)
    n = len(origins)
    if blending == "mean":
        return np.ones((n, tile_size), dtype=np.float32)
    if blending == "gaussian":
        x = np.arange(tile_size, dtype=np.float64) - (tile_size - 1) / 2
        sigma = tile_size / 8
        g = np.exp(-(x**2) / (2 * sigma**2))
        g = np.maximum(g / g.max(), GAUSSIAN_FLOOR)
        return np.repeat(g.astype(np.float32)[None, :], n, axis=0)
    margin = (tile_size - stride) // 2
    profiles = np.zeros((n, tile_size), dtype=np.float32)
    for i in range(n):
        start = 0 if i == 0 else margin
        stop = tile_size if i == n - 1 else margin + stride
        profiles[i, start:stop] = 1.0
    return profiles


class BandStitcher:
    """Accumulate blended tile predictions one grid row at a time, in a band of memory.

    Drive it in raster order: for each grid row ``i`` call :meth:`start_row`
    (which hands out the rows that are now final), then :meth:`add` the
    predicted tiles of that row (tiles never added count as probability 0), and
    at the end :meth:`finish`. :meth:`normalise` turns the handed-out weighted
    sums into probabilities; it only reads immutable state, so another thread
    may call it.

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)`` of the image being predicted, at prediction resolution.
    tile_size : int
        Tile side in pixels.
    stride : int, optional
        Grid step, ``<= tile_size``; default ``tile_size`` (no overlap).
    edge : {"shift", "pad"}
        ``"shift"`` moves the last tile back to end at the edge; ``"pad"`` lets it
        extend past the edge (the caller pads the image).
    blending : {"gaussian", "mean", "crop"}
        See the module notes.

    Examples
    --------
    >>> import numpy as np
    >>> s = BandStitcher((3, 4), 2, 1, blending="mean")
    >>> s.row_origins, s.col_origins
    ([0, 1], [0, 1, 2])
    >>> bands = []
    >>> for i, r in enumerate(s.row_origins):
    ...     bands.append(s.start_row(i))
    ...     for j, c in enumerate(s.col_origins):
    ...         s.add(i, j, np.full((2, 2), (r + c) / 8, dtype=np.float32))
    >>> bands.append(s.finish())
    >>> np.vstack([s.normalise(start, sums) for start, sums in bands]) * 16
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [2., 3., 5., 6.]], dtype=float32)
    """

    def __init__(
        self,
        shape: tuple[int, int],
        tile_size: int,
        stride: int | None = None,
        *,
        edge: GridEdge = "shift",
        blending: Blending = "gaussian",
    ) -> None:
        height, width = (_positive("shape[0]", shape[0]), _positive("shape[1]", shape[1]))
        tile_size = _positive("tile_size", tile_size)
        stride = tile_size if stride is None else _positive("stride", stride)
        if stride > tile_size:
            raise ValueError(
                f"stride must be <= tile_size (tiles must overlap or abut), "
                f"got stride={stride}, tile_size={tile_size}"
            )
        look_up_option("edge", edge, GRID_EDGES)
        look_up_option("blending", blending, BLENDINGS)
        self.shape = (height, width)
        self.tile_size = tile_size
        self.stride = stride
        self.edge = edge
        self.blending = blending
        self.row_origins = grid_origins(height, tile_size, stride, edge)
        self.col_origins = grid_origins(width, tile_size, stride, edge)
        self.row_profiles = blend_profile(self.row_origins, tile_size, stride, blending)
        self.col_profiles = blend_profile(self.col_origins, tile_size, stride, blending)
        self.padded_shape = (
            max(height, self.row_origins[-1] + tile_size),
            max(width, self.col_origins[-1] + tile_size),
        )
        self._row_weights = self._axis_sums(self.row_origins, self.row_profiles, 0)
        self._col_weights = self._axis_sums(self.col_origins, self.col_profiles, 1)
        self._sums = np.zeros((tile_size, self.padded_shape[1]), dtype=np.float32)
        # Tiles share few distinct profiles (inner tiles all the same): their weights are cached.
        self._row_kind = _profile_kinds(self.row_profiles)
        self._col_kind = _profile_kinds(self.col_profiles)
        self._weights: dict[tuple[int, int], NDArray[np.float32]] = {}
        self._product = np.empty((tile_size, tile_size), dtype=np.float32)
        self._top = 0
        self._row = -1
        self._done = False

    def _axis_sums(
        self, origins: list[int], profiles: NDArray[np.float32], axis: int
    ) -> NDArray[np.float32]:
        total = np.zeros(self.padded_shape[axis], dtype=np.float64)
        for origin, profile in zip(origins, profiles, strict=True):
            total[origin : origin + self.tile_size] += profile
        kept = total[: self.shape[axis]]
        if not (kept > 0).all():  # pragma: no cover - guaranteed by the profiles
            raise AssertionError("a pixel has zero total blending weight")
        return kept.astype(np.float32)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)`` of the tile grid."""
        return (len(self.row_origins), len(self.col_origins))

    @property
    def band_bytes(self) -> int:
        """Bytes of the band of weighted sums held in memory."""
        return int(self._sums.nbytes)

    def _pop(self, stop: int) -> tuple[int, NDArray[np.float32]]:
        """Hand out rows ``[top, stop)`` (clipped to the image) and move the band down."""
        start = self._top
        n = max(0, stop - start)
        width = self.shape[1]
        kept = min(n, self.shape[0] - start)
        out = np.zeros((kept, width), dtype=np.float32)
        inside = min(kept, self.tile_size)
        out[:inside] = self._sums[:inside, :width]
        if n >= self.tile_size:
            self._sums[:] = 0
        elif n:
            self._sums[: self.tile_size - n] = self._sums[n:]
            self._sums[self.tile_size - n :] = 0
        self._top = stop
        return start, out

    def start_row(self, grid_row: int) -> tuple[int, NDArray[np.float32]]:
        """Begin grid row ``grid_row`` and hand out the rows that no later tile touches.

        Parameters
        ----------
        grid_row : int
            The next grid row, greater than the previous one.

        Returns
        -------
        (int, numpy.ndarray)
            ``(start, sums)``: the weighted sums of image rows
            ``start .. start + len(sums)`` (possibly none), for :meth:`normalise`.
        """
        if self._done:
            raise RuntimeError("the stitcher is finished")
        if not self._row < grid_row < len(self.row_origins):
            raise ValueError(
                f"grid_row must follow {self._row} and be < {len(self.row_origins)}, got {grid_row}"
            )
        self._row = grid_row
        return self._pop(self.row_origins[grid_row])

    def add(self, grid_row: int, grid_col: int, probs: NDArray[np.floating[Any]]) -> None:
        """Add the predicted probabilities of tile ``(grid_row, grid_col)``.

        Parameters
        ----------
        grid_row, grid_col : int
            The tile's grid position; ``grid_row`` must be the current row.
        probs : numpy.ndarray
            ``(tile_size, tile_size)`` probabilities.
        """
        self._check_tile(grid_row, probs)
        t = self.tile_size
        row = self.row_origins[grid_row] - self._top
        col = self.col_origins[grid_col]
        weight = self._weight(grid_row, grid_col)
        np.multiply(weight, probs, out=self._product, casting="same_kind")
        self._sums[row : row + t, col : col + t] += self._product

    def add_tiles(
        self,
        grid_row: int,
        tiles: Sequence[tuple[int, NDArray[np.floating[Any]]]],
        pool: Executor | None = None,
        stripes: int = 1,
    ) -> None:
        """Add ``(grid_col, probs)`` tiles of the current row, as :meth:`add` in order would.

        With a ``pool``, ``stripes`` threads each add the tiles' parts that fall in
        their own band of columns, tile after tile: every pixel receives the same
        sums in the same order, so the result is the same to the bit.
        """
        if pool is None or stripes < 2 or len(tiles) < 2:
            for grid_col, probs in tiles:
                self.add(grid_row, grid_col, probs)
            return
        for _, probs in tiles:
            self._check_tile(grid_row, probs)
        weights = {grid_col: self._weight(grid_row, grid_col) for grid_col, _ in tiles}
        t = self.tile_size
        row = self.row_origins[grid_row] - self._top
        first = self.col_origins[min(c for c, _ in tiles)]
        last = self.col_origins[max(c for c, _ in tiles)] + t
        edges = np.linspace(first, last, stripes + 1).round().astype(int)

        def stripe(lo: int, hi: int) -> None:
            product = np.empty((t, t), dtype=np.float32)
            for grid_col, probs in tiles:
                col = self.col_origins[grid_col]
                a, b = max(lo, col), min(hi, col + t)
                if a >= b:
                    continue
                part = product[:, : b - a]
                np.multiply(
                    weights[grid_col][:, a - col : b - col],
                    probs[:, a - col : b - col],
                    out=part,
                    casting="same_kind",
                )
                self._sums[row : row + t, a:b] += part

        list(pool.map(stripe, edges[:-1].tolist(), edges[1:].tolist()))

    def _check_tile(self, grid_row: int, probs: NDArray[np.floating[Any]]) -> None:
        if grid_row != self._row:
            raise ValueError(
                f"tiles must come in raster order: grid row {self._row} is current, "
                f"got a tile of row {grid_row}"
            )
        t = self.tile_size
        if probs.shape != (t, t):
            raise ValueError(f"probs must have shape {(t, t)}, got {probs.shape}")

    def _weight(self, grid_row: int, grid_col: int) -> NDArray[np.float32]:
        """The blending weight of a tile, shared by the tiles with the same profiles."""
        kind = (self._row_kind[grid_row], self._col_kind[grid_col])
        weight = self._weights.get(kind)
        if weight is None:
            weight = np.multiply.outer(self.row_profiles[grid_row], self.col_profiles[grid_col])
            self._weights[kind] = weight
        return weight

    def finish(self) -> tuple[int, NDArray[np.float32]]:
        """Hand out the remaining rows; the stitcher cannot be used afterwards."""
        if self._done:
            raise RuntimeError("the stitcher is finished")
        self._done = True
        result = self._pop(self.shape[0])
        self._sums = np.zeros((0, 0), dtype=np.float32)
        return result

    def normalise(self, start: int, sums: NDArray[np.float32]) -> NDArray[np.float32]:
        """Divide handed-out sums by the total blending weight: probabilities of those rows.

        Parameters
        ----------
        start : int
            First image row of ``sums``.
        sums : numpy.ndarray
            As returned by :meth:`start_row` or :meth:`finish`; divided in place.

        Returns
        -------
        numpy.ndarray
            ``sums``, now ``float32`` probabilities.
        """
        for rows in self._divided(start, sums):
            np.clip(rows, 0.0, 1.0, out=rows)
        return sums

    def threshold(
        self, start: int, sums: NDArray[np.float32], threshold: float
    ) -> NDArray[np.bool_]:
        """``normalise(start, sums) > threshold``, without keeping the probabilities.

        The same mask (clipping to ``[0, 1]`` cannot move a value across a
        threshold in ``[0, 1)``), in fewer passes over memory. ``sums`` is
        divided in place.
        """
        out = np.empty(sums.shape, dtype=np.bool_)
        limit = np.float32(threshold)
        row = 0
        for rows in self._divided(start, sums):
            np.greater(rows, limit, out=out[row : row + rows.shape[0]])
            row += rows.shape[0]
        return out

    def _divided(self, start: int, sums: NDArray[np.float32]) -> Iterator[NDArray[np.float32]]:
        """Divide ``sums`` by the weights in slabs of rows that stay in the CPU cache."""
        step = max(1, _SLAB_BYTES // (4 * max(1, sums.shape[1])))
        for r in range(0, sums.shape[0], step):
            rows = sums[r : r + step]
            rows /= self._row_weights[start + r : start + r + rows.shape[0], None]
            rows /= self._col_weights[None, :]
            yield rows


def _profile_kinds(profiles: NDArray[np.float32]) -> list[int]:
    """For each profile, the index of the first profile equal to it."""
    first: dict[bytes, int] = {}
    return [first.setdefault(profile.tobytes(), i) for i, profile in enumerate(profiles)]


def _run_batch(
    predictor: Predictor,
    stitcher: BandStitcher,
    batch: list[tuple[int, int, NDArray[np.uint8]]],
) -> None:
    if not batch:
        return
    images = np.stack([image for _, _, image in batch])
    t = stitcher.tile_size
    probs = check_probabilities(predictor(images), len(batch), (t, t))
    for (i, j, _), p in zip(batch, probs, strict=True):
        stitcher.add(i, j, p)
    batch.clear()


def sliding_window_predict(
    image: NDArray[np.uint8],
    predictor: Predictor | Callable[[NDArray[np.uint8]], NDArray[Any]],
    *,
    tile_size: int,
    stride: int | None = None,
    edge: GridEdge = "shift",
    blending: Blending = "gaussian",
    batch_size: int = 8,
    tta: bool = False,
    fill: int = 255,
) -> NDArray[np.float32]:
    """Predict an in-memory RGB image tile by tile and stitch the blended probabilities.

    The in-memory counterpart of :func:`glomseg.predict_slide`, with the same
    grid and blending; use it for images that fit in memory, at the resolution
    the model expects.

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` RGB of shape ``(H, W, 3)``.
    predictor : Predictor
        ``(n, tile_size, tile_size, 3) uint8 -> (n, tile_size, tile_size)``
        probabilities in ``[0, 1]``.
    tile_size : int
        Tile side in pixels.
    stride : int, optional
        Grid step, ``<= tile_size``; default ``tile_size * 3 // 4`` (a quarter
        overlap), as in :class:`glomseg.PredictConfig`.
    edge : {"shift", "pad"}
        Where the last tile along an axis goes; parts of tiles past the image
        (always with ``"pad"``, and with ``"shift"`` when the image is smaller
        than a tile) are filled with ``fill``.
    blending : {"gaussian", "mean", "crop"}
        How overlapping predictions are weighted (see :mod:`glomseg.predict._stitch`).
    batch_size : int
        Tiles per predictor call.
    tta : bool
        Average flip test-time augmentation (see :func:`flip_tta`).
    fill : int
        Value of padded pixels, default 255 (white glass).

    Returns
    -------
    numpy.ndarray
        ``float32`` probabilities of shape ``(H, W)``.

    Examples
    --------
    An identity predictor (the red channel as probability) stitches back to its input:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    >>> def red(batch: np.ndarray) -> np.ndarray:
    ...     return batch[..., 0] / np.float32(255)
    >>> probs = sliding_window_predict(image, red, tile_size=16, stride=12)
    >>> probs.shape, bool(np.allclose(probs, image[..., 0] / 255, atol=1e-6))
    ((37, 50), True)
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"image must be uint8 of shape (H, W, 3), got {array.dtype} of shape {array.shape}"
        )
    tile_size = _positive("tile_size", tile_size)
    stride = _default_stride(tile_size) if stride is None else stride
    batch_size = _positive("batch_size", batch_size)
    if isinstance(fill, bool) or not isinstance(fill, int | np.integer) or not 0 <= fill <= 255:
        raise ValueError(f"fill must be in [0, 255], got {fill!r}")
    stitcher = BandStitcher(
        (array.shape[0], array.shape[1]), tile_size, stride, edge=edge, blending=blending
    )
    ph, pw = stitcher.padded_shape
    if (ph, pw) != array.shape[:2]:
        padded = np.full((ph, pw, 3), fill, dtype=np.uint8)
        padded[: array.shape[0], : array.shape[1]] = array
        array = padded
    model: Predictor = flip_tta(predictor) if tta else predictor
    out = np.empty(stitcher.shape, dtype=np.float32)

    def emit(band: tuple[int, NDArray[np.float32]]) -> None:
        start, sums = band
        out[start : start + sums.shape[0]] = stitcher.normalise(start, sums)

    batch: list[tuple[int, int, NDArray[np.uint8]]] = []
    for i, r in enumerate(stitcher.row_origins):
        _run_batch(model, stitcher, batch)
        emit(stitcher.start_row(i))
        for j, c in enumerate(stitcher.col_origins):
            batch.append((i, j, array[r : r + tile_size, c : c + tile_size]))
            if len(batch) == batch_size:
                _run_batch(model, stitcher, batch)
    _run_batch(model, stitcher, batch)
    emit(stitcher.finish())
    return out


def tiles_count(shape: tuple[int, int], tile_size: int, stride: int, edge: GridEdge) -> int:
    """Number of tiles of the grid over ``shape`` (at prediction resolution).

    Examples
    --------
    >>> tiles_count((100, 100), 32, 16, "shift")
    36
    """
    rows = grid_origins(shape[0], tile_size, stride, edge)
    cols = grid_origins(shape[1], tile_size, stride, edge)
    return len(rows) * len(cols)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def prediction_shape(shape: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Shape of a slide of full-resolution ``shape`` at prediction resolution.

    Prediction pixel ``i`` covers full-resolution ``[i * downsample, (i + 1) *
    downsample)`` along each axis, so the shape is ``ceil(H / downsample)`` by
    ``ceil(W / downsample)``; the last row and column may reach past the slide.
    A fractional ``downsample`` is allowed (a quotient within 1e-9 of a whole
    number counts as that number, so no prediction pixel lies wholly outside).

    Examples
    --------
    >>> prediction_shape((31299, 44066), 2)
    (15650, 22033)
    >>> prediction_shape((100, 7), 2.5), prediction_shape((3, 4), 0.5)
    ((40, 3), (6, 8))
    """
    if isinstance(downsample, int):
        return (_ceil_div(shape[0], downsample), _ceil_div(shape[1], downsample))
    return (
        max(1, math.ceil(shape[0] / downsample - 1e-9)),
        max(1, math.ceil(shape[1] / downsample - 1e-9)),
    )
