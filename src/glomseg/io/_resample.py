"""Exact area averaging (a box filter of any factor) of an image read window by window.

The source is a callable ``read(window, out)`` that decodes a window of an image of
known shape into ``out`` (``uint8`` RGB). Output cells have fractional edges in source
pixels; a cell's value is the exact average of the source over its area, where the
part of a cell outside the image counts as a constant ``fill``. That part is added in
closed form, never read or materialised, so a huge window mostly outside the image
costs no more than the part of it inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from glomseg.io._window import Window

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__: list[str] = []

#: Bytes of float32 pixels averaged at once by a resampled read.
_BAND_BYTES = 32 * 2**20

Reader = Callable[[Window, "NDArray[np.uint8]"], None]


def _equal_edges(start: float, stop: float, n: int) -> NDArray[np.float64]:
    """``n + 1`` edges splitting ``[start, stop)`` into ``n`` equal cells."""
    step = (stop - start) / n
    edges: NDArray[np.float64] = start + np.arange(n + 1, dtype=np.float64) * step
    return edges


def _area_weights(edges: NDArray[np.float64], n_in: int) -> tuple[Any, NDArray[np.float64]]:
    """Area weights of the cells ``[edges[i], edges[i + 1])`` over source pixels ``0 .. n_in - 1``.

    Returns a sparse ``(len(edges) - 1, n_in)`` float32 matrix whose row ``i``
    holds the share of cell ``i`` that each source pixel covers, and the share
    of each cell inside ``[0, n_in)``. A cell wholly inside has weights that sum
    to 1 and a share of exactly 1.0, so it gets no ``fill`` at all.
    """
    from scipy.sparse import csr_matrix

    n_out = len(edges) - 1
    lo_edge = np.clip(edges[:-1], 0.0, n_in)
    hi_edge = np.clip(edges[1:], 0.0, n_in)
    first = np.minimum(np.floor(lo_edge).astype(np.int64), n_in - 1)
    last = np.maximum(np.ceil(hi_edge).astype(np.int64), first)
    counts = last - first
    starts = np.cumsum(counts) - counts
    out_index = np.repeat(np.arange(n_out), counts)
    in_index = np.repeat(first, counts) + (np.arange(counts.sum()) - np.repeat(starts, counts))
    lo = np.maximum(lo_edge[out_index], in_index)
    hi = np.minimum(hi_edge[out_index], in_index + 1)
    weights = np.clip(hi - lo, 0.0, None)
    covered = np.bincount(out_index, weights, minlength=n_out)
    whole = (edges[:-1] >= 0) & (edges[1:] <= n_in)
    length = edges[1:] - edges[:-1]
    weights /= np.where(whole, covered, length)[out_index]
    share: NDArray[np.float64] = np.where(whole, 1.0, covered / length)
    matrix = csr_matrix((weights.astype(np.float32), (out_index, in_index)), shape=(n_out, n_in))
    return matrix, share


def _area_average(
    read: Reader,
    inside: Window | None,
    rows: Any,
    row_share: NDArray[np.float64],
    cols: Any,
    col_share: NDArray[np.float64],
    fill: int,
) -> NDArray[np.uint8]:
    """Apply area weights (:func:`_area_weights`) to ``inside``, band by band of its rows.

    ``rows`` and ``cols`` weigh the rows and columns of ``inside`` (the readable
    part of the source); the rest of each cell, ``1 - row_share * col_share``
    of it, counts as ``fill``. Memory: the output plus one band.
    """
    target = (len(row_share), len(col_share))
    out = np.zeros((target[0], target[1] * 3), dtype=np.float32)
    if inside is not None:
        rows = rows.tocsc()
        band = max(1, _BAND_BYTES // (inside.width * 3 * 4))
        for start in range(inside.row, inside.row_stop, band):
            stop = min(start + band, inside.row_stop)
            block = np.empty((stop - start, inside.width, 3), dtype=np.uint8)
            read(Window.from_bounds(start, inside.col, stop, inside.col_stop), block)
            # Average along columns, then add this band's share of each output row.
            flat = block.transpose(1, 0, 2).reshape(inside.width, -1).astype(np.float32)
            narrowed = np.asarray(cols @ flat).reshape(target[1], stop - start, 3)
            by_row = narrowed.transpose(1, 0, 2).reshape(stop - start, -1)
            out += np.asarray(rows[:, start - inside.row : stop - inside.row] @ by_row)
    result = out.reshape(target[0], target[1], 3)
    outside = 1.0 - np.outer(row_share, col_share)
    if outside.any():
        result += (fill * outside).astype(np.float32)[..., np.newaxis]
    rgb: NDArray[np.uint8] = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    return rgb


def _resample_window(
    read: Reader,
    shape: tuple[int, int],
    rows: tuple[float, float],
    cols: tuple[float, float],
    target: tuple[int, int],
    fill: int,
) -> NDArray[np.uint8]:
    """Area-average the span ``rows`` x ``cols`` of a source of ``shape`` into ``target`` cells.

    ``rows`` and ``cols`` are ``(start, stop)`` in (fractional) source pixels and
    may extend outside the source; that part counts as ``fill``.
    """
    r0, r1 = max(0, math.floor(rows[0])), min(shape[0], math.ceil(rows[1]))
    c0, c1 = max(0, math.floor(cols[0])), min(shape[1], math.ceil(cols[1]))
    if r1 <= r0 or c1 <= c0:
        return np.full((*target, 3), fill, dtype=np.uint8)
    inside = Window.from_bounds(r0, c0, r1, c1)
    row_matrix, row_share = _area_weights(
        _equal_edges(rows[0] - r0, rows[1] - r0, target[0]), inside.height
    )
    col_matrix, col_share = _area_weights(
        _equal_edges(cols[0] - c0, cols[1] - c0, target[1]), inside.width
    )
    return _area_average(read, inside, row_matrix, row_share, col_matrix, col_share, fill)


def _grid_average(
    read: Reader,
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
    n, m = len(rows) - 1, len(cols) - 1
    c0 = max(0, math.floor(cols[0]))
    c1 = min(shape[1], math.ceil(cols[-1]))
    if c1 <= c0 or n < 1:
        return np.full((max(n, 0), m, 3), fill, dtype=np.uint8)
    col_matrix, col_share = _area_weights(cols - c0, c1 - c0)
    budget = max(1, _BAND_BYTES // ((c1 - c0) * 3 * 4))
    out = np.empty((n, m, 3), dtype=np.uint8)
    i = 0
    while i < n:
        r0 = math.floor(rows[i])
        j = int(np.searchsorted(rows, r0 + budget, side="right")) - 1
        j = min(max(j, i + 1), n)
        top, bottom = max(0, r0), min(shape[0], math.ceil(rows[j]))
        if bottom <= top:
            out[i:j] = fill
        else:
            row_matrix, row_share = _area_weights(rows[i : j + 1] - top, bottom - top)
            inside = Window.from_bounds(top, c0, bottom, c1)
            out[i:j] = _area_average(
                read, inside, row_matrix, row_share, col_matrix, col_share, fill
            )
        i = j
    return out


def _block_mean(full: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    """Area average of ``factor`` x ``factor`` blocks, rounded to nearest (ties to even).

    Rows are summed first (contiguous rows, fast), then columns channel by
    channel (long strided inner loops rather than loops over 3 channels), in
    integers; a power-of-two area is divided by a shift, in integers too.
    """
    if factor == 1:
        return full
    h, w = full.shape[0] // factor, full.shape[1] // factor
    full = full[: h * factor, : w * factor]
    area = factor * factor
    dtype = np.uint16 if area * 255 < 2**16 else np.uint32
    rows: NDArray[Any] = np.add(full[0::factor], full[1::factor], dtype=dtype)
    for k in range(2, factor):
        rows += full[k::factor]
    total: NDArray[Any] = np.empty((h, w, 3), dtype=dtype)
    for c in range(3):
        channel, out = rows[:, :, c], total[:, :, c]
        np.add(channel[:, 0::factor], channel[:, 1::factor], out=out)
        for k in range(2, factor):
            out += channel[:, k::factor]
    if area & (area - 1) == 0:  # a power of two: shift, adding half less one, plus the
        shift = area.bit_length() - 1  # quotient's lowest bit so that ties go to even
        total += dtype(area // 2 - 1) + ((total >> dtype(shift)) & dtype(1))
        return (total >> dtype(shift)).astype(np.uint8)
    # Never a tie (an odd area, or no exact half), and float32 is exact enough here.
    mean = total.astype(np.float32)
    mean /= np.float32(area)
    return np.rint(mean).astype(np.uint8)


def _edges(start: int, stop: int, downsample: float) -> NDArray[np.float64]:
    """Full-resolution edges of prediction pixels ``start .. stop``: ``i * downsample``."""
    return np.arange(start, stop + 1, dtype=np.float64) * downsample
