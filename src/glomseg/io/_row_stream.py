"""A slide at prediction resolution, row by row in order, read ahead by a pool of threads.

:class:`RowStream` cuts the prediction grid into pieces (a band of rows by a
range of columns, whole TIFF segments where the downsample allows) and reads,
downsamples and classifies (tissue or glass) several pieces at once in worker
threads; the decoders, the averaging and the tissue rule all release the GIL.
The consumer takes rows in increasing order. At most ``2 * workers`` pieces
are in flight, so memory stays bounded by a few pieces (about
:data:`PIECE_BYTES` of full-resolution pixels each) whatever the slide size.

Each prediction pixel depends on its own footprint only, so the rows are the
same, byte for byte, whatever the number of workers or the piece size.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from glomseg.io._reader import SlideReader
from glomseg.io._resample import _block_mean, _edges
from glomseg.io._tissue import tissue_pixels
from glomseg.io._window import Window

__all__ = ["PIECE_BYTES", "RowStream", "default_workers"]

#: Full-resolution bytes of a piece read by one worker (at least one segment).
PIECE_BYTES = 4 * 2**20
#: Full-resolution columns of a piece, for slides whose segments are narrower.
_PIECE_COLS = 2048


def default_workers() -> int:
    """The machine's cores: the default of glomseg's reader, writer and export threads."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class _Chunk:
    """Prediction rows ``[start, stop)`` of all columns, filled by its pieces' workers."""

    start: int
    stop: int
    image: NDArray[np.uint8]
    tissue: NDArray[np.bool_] | None
    pieces: list[Future[None]]


class RowStream:
    """Rows ``[0, height)`` of a slide at prediction resolution, read ahead in parallel.

    Parameters
    ----------
    reader : SlideReader
        The slide; its reads are thread-safe.
    shape : (int, int)
        ``(height, width)`` of the prediction grid.
    downsample : int or float
        Full-resolution pixels per prediction pixel (an ``int`` for a whole factor).
    workers : int
        Threads reading pieces at once, >= 1.
    saturation_threshold : int or None
        Classify each prediction pixel as tissue with :func:`glomseg.io.tissue_pixels`
        at this threshold; ``None`` skips it.
    dark_threshold : int or None
        ``tissue_pixels``' grey threshold (tissue without colour), or None.
    piece_bytes : int
        Full-resolution bytes of a piece.
    """

    def __init__(
        self,
        reader: SlideReader,
        shape: tuple[int, int],
        downsample: int | float,
        *,
        workers: int,
        saturation_threshold: int | None,
        dark_threshold: int | None = None,
        piece_bytes: int = PIECE_BYTES,
    ) -> None:
        self.reader = reader
        self.height, self.width = shape
        self.downsample = downsample
        self.saturation_threshold = saturation_threshold
        self.dark_threshold = dark_threshold
        self.workers = workers
        levels = reader.level_downsamples[1:]
        # With a pyramid level at or below the downsample, let the reader resample from it.
        self.use_levels = downsample > 1 and any(d <= downsample * (1 + 1e-3) for d in levels)
        seg_h, seg_w = reader.segment_shape
        full_w = self.width * downsample
        if self.use_levels or seg_w >= full_w:
            cols = self.width  # reader-resampled rows, or strips: whole rows
        else:
            cols = self._span(max(seg_w, _PIECE_COLS), seg_w)
        self.cols = max(1, min(self.width, cols))
        rows_full = max(seg_h, piece_bytes // max(1, math.ceil(self.cols * downsample) * 3))
        self.rows = max(1, min(self.height, self._span(rows_full, seg_h)))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="glomseg-read")
        self.lock = threading.Lock()
        self.busy_s = 0.0
        self.chunks: deque[_Chunk] = deque()
        self.in_flight = 0
        self.next_start = 0
        self.closed = False

    def _span(self, full: int, segment: int) -> int:
        """Prediction pixels covering about ``full`` full-resolution ones.

        Whole segments when a segment holds a whole number of prediction pixels.
        """
        ds = self.downsample
        if isinstance(ds, int) and segment % ds == 0:
            per_segment = segment // ds
            return per_segment * max(1, round(full / segment))
        return max(1, round(full / ds))

    # -- the consumer -------------------------------------------------------------------
    def take(
        self,
        start: int,
        stop: int,
        image: NDArray[np.uint8],
        tissue: NDArray[np.bool_] | None,
    ) -> None:
        """Copy rows ``[start, stop)`` into ``image`` (and ``tissue``), rows relative to ``start``.

        Calls must ask for increasing, non-overlapping row ranges.
        """
        row = start
        while row < stop:
            self._fill()
            chunk = self.chunks[0]
            if chunk.stop <= row:  # consumed
                self.chunks.popleft()
                continue
            if chunk.start > row:  # pragma: no cover - rows are asked for in order
                raise RuntimeError(f"rows {row}.. were asked for after row {chunk.start}")
            for piece in chunk.pieces:
                piece.result()  # re-raises a worker's error
            end = min(stop, chunk.stop)
            image[row - start : end - start, : self.width] = chunk.image[
                row - chunk.start : end - chunk.start
            ]
            if tissue is not None and chunk.tissue is not None:
                tissue[row - start : end - start, : self.width] = chunk.tissue[
                    row - chunk.start : end - chunk.start
                ]
            row = end

    def _fill(self) -> None:
        """Submit chunks ahead of the one being consumed, about ``2 * workers`` pieces of them."""
        ahead = sum(len(c.pieces) for c in list(self.chunks)[1:])
        while self.next_start < self.height and (len(self.chunks) < 2 or ahead < 2 * self.workers):
            chunk = self._submit(self.next_start, min(self.next_start + self.rows, self.height))
            if self.chunks:
                ahead += len(chunk.pieces)
            self.chunks.append(chunk)
            self.next_start = chunk.stop

    def _submit(self, start: int, stop: int) -> _Chunk:
        n = stop - start
        image = np.empty((n, self.width, 3), dtype=np.uint8)
        tissue = (
            None if self.saturation_threshold is None else np.empty((n, self.width), dtype=np.bool_)
        )
        pieces = [
            self.pool.submit(
                self._read_piece, start, stop, c0, min(c0 + self.cols, self.width), image, tissue
            )
            for c0 in range(0, self.width, self.cols)
        ]
        return _Chunk(start, stop, image, tissue, pieces)

    # -- the workers -------------------------------------------------------------------
    def _read_piece(
        self,
        r0: int,
        r1: int,
        c0: int,
        c1: int,
        image: NDArray[np.uint8],
        tissue: NDArray[np.bool_] | None,
    ) -> None:
        begin = time.perf_counter()
        block = self.read(r0, r1, c0, c1)
        image[:, c0:c1] = block
        if tissue is not None:
            assert self.saturation_threshold is not None
            tissue[:, c0:c1] = tissue_pixels(
                block,
                saturation_threshold=self.saturation_threshold,
                dark_threshold=self.dark_threshold,
            )
        with self.lock:
            self.busy_s += time.perf_counter() - begin

    def read(self, r0: int, r1: int, c0: int, c1: int) -> NDArray[np.uint8]:
        """Prediction pixels ``[r0, r1) x [c0, c1)``: the area average of each footprint."""
        ds = self.downsample
        if not isinstance(ds, int):  # a fractional footprint: exact area average
            return self.reader._read_area(_edges(r0, r1, ds), _edges(c0, c1, ds))
        window = Window(r0 * ds, c0 * ds, (r1 - r0) * ds, (c1 - c0) * ds)
        if self.use_levels:
            return self.reader.read(window, out_shape=(r1 - r0, c1 - c0))
        return _block_mean(self.reader.read(window), ds)

    def close(self) -> None:
        """Stop the workers; pieces not started are dropped."""
        if not self.closed:
            self.closed = True
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RowStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
