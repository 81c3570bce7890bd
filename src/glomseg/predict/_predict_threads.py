"""The reader and writer threads of :func:`glomseg.predict_slide`.

The reader thread reads the slide band by band of rows at prediction
resolution and queues the tiles to predict; the writer thread blends the
predictions, thresholds the rows no later tile touches, maps them to full
resolution and writes them to the mask store, in order. See
:mod:`glomseg.predict._predict` for the whole pipeline.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from glomseg.io._reader import SlideReader
from glomseg.io._row_stream import RowStream, default_workers
from glomseg.predict._objects import ObjectFilter
from glomseg.predict._predict_config import PredictConfig, PredictionStats
from glomseg.predict._scale import MAX_OBJECT_TILES, _centres
from glomseg.predict._slide_mask import _write_rows
from glomseg.predict._stitch import (
    BandStitcher,
)

if TYPE_CHECKING:
    import zarr

__all__ = []

#: Seconds a thread waits on a queue before checking whether it should stop.
_POLL_S = 0.1


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

    def run(self) -> None:
        try:
            self._run()
            _put(self.out, _END, self.stop)
        except BaseException as error:  # handed to the calling thread
            _put(self.out, _Failure(error), self.stop)

    def _run(self) -> None:
        cfg = self.config
        stream = RowStream(
            self.reader,
            self.stitcher.shape,
            self.downsample,
            workers=cfg.workers or default_workers(),
            saturation_threshold=cfg.saturation_threshold if cfg.skip_background else None,
            dark_threshold=cfg.dark_threshold,
        )
        try:
            self._cut(stream)
        finally:
            stream.close()
            self.stats.read_s += stream.busy_s

    def _cut(self, stream: RowStream) -> None:
        """Move the band down the slide, row of tiles by row of tiles, and queue the tiles."""
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
            self.stats.read_s += time.perf_counter() - begin
            start, stop = max(loaded, origin), min(origin + t, height)
            if stop > start:
                rows = slice(start - origin, stop - origin)
                # Waiting for the reader threads is not busy time: theirs is counted apart.
                stream.take(start, stop, band[rows], tissue[rows] if cfg.skip_background else None)
                loaded = stop
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
        # Queued full-resolution rows: (row count, (first column, the span that holds
        # mask pixels) or None where all of them are 0).
        self.pending: list[tuple[int, tuple[int, NDArray[np.uint8]] | None]] = []
        self.pending_rows = 0
        self.written = 0
        self.chunk_rows, self.chunk_cols = (int(c) for c in store.chunks)
        self.current = -1
        assert config.downsample is not None
        self.downsample: int | float = config.downsample
        self.next_row = 0  # the next full-resolution row to hand to the store
        # Blending runs in column stripes, one thread each, when there are cores for it.
        self.stripes = config.workers or default_workers()
        self.pool = ThreadPoolExecutor(self.stripes) if self.stripes > 1 else None
        if not isinstance(self.downsample, int):
            self.cols = _centres(0, full_shape[1], self.downsample, stitcher.shape[1])
        self.objects: ObjectFilter | None = None
        if config.min_confidence:
            self.objects = ObjectFilter(
                stitcher.shape[1],
                min_confidence=config.min_confidence,
                max_rows=MAX_OBJECT_TILES * stitcher.tile_size,
            )

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
                    if self.objects is not None:
                        for first, rows in self.objects.finish():
                            self._queue(first, rows)
                    self._flush(final=True)
                    return
                keys, probs = item
                start = 0
                while start < len(keys):  # runs of tiles of one grid row
                    i = keys[start][0]
                    stop = start
                    while stop < len(keys) and keys[stop][0] == i:
                        stop += 1
                    self._advance(i)
                    begin = time.perf_counter()
                    tiles = [(keys[k][1], probs[k]) for k in range(start, stop)]
                    self.stitcher.add_tiles(i, tiles, self.pool, self.stripes)
                    self.stats.stitch_s += time.perf_counter() - begin
                    start = stop
        except BaseException as error:  # handed to the calling thread
            self.error = error
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)

    def _advance(self, to_row: int) -> None:
        """Start grid rows up to ``to_row``, writing the rows that become final."""
        while self.current < to_row:
            self.current += 1
            begin = time.perf_counter()
            start, sums = self.stitcher.start_row(self.current)
            self.stats.stitch_s += time.perf_counter() - begin
            self._band(start, sums)

    def _band(self, start: int, sums: NDArray[np.float32]) -> None:
        """Threshold finished prediction rows and queue those that are final."""
        if not sums.shape[0]:
            return
        begin = time.perf_counter()
        mask = self.stitcher.threshold(start, sums, self.config.threshold)
        if self.objects is None:
            self.stats.stitch_s += time.perf_counter() - begin
            self._queue(start, mask)
            return
        # ``sums`` now holds the probabilities; the filter holds rows back until
        # every region that touches them is complete.
        released = self.objects.push(start, mask, sums)
        self.stats.stitch_s += time.perf_counter() - begin
        for first, rows in released:
            self._queue(first, rows)

    def _queue(self, start: int, bool_mask: NDArray[np.bool_]) -> None:
        """Queue thresholded prediction rows at full resolution.

        Only the span of columns that holds mask pixels is mapped to full
        resolution; the rest of the band is known to be 0 and costs nothing.
        """
        begin = time.perf_counter()
        ds = self.downsample
        h, w = self.full_shape
        mask = bool_mask.view(np.uint8)
        stop = start + mask.shape[0]
        if isinstance(ds, int):
            rows = min(stop * ds, h) - start * ds
        else:
            # Full-resolution rows whose centres fall in prediction rows [start, stop).
            last = h if stop == self.stitcher.shape[0] else min(h, math.ceil(stop * ds) + 1)
            owner = _centres(self.next_row, last, ds, self.stitcher.shape[0])
            owner = owner[owner < stop]
            rows = len(owner)
        span: tuple[int, NDArray[np.uint8]] | None = None
        hits = np.flatnonzero(mask.any(axis=0))
        if hits.size:
            p0, p1 = int(hits[0]), int(hits[-1]) + 1
            if isinstance(ds, int):
                f0, f1 = p0 * ds, min(p1 * ds, w)
                full = mask[:, p0:p1]
                if ds > 1:
                    full = np.repeat(np.repeat(full, ds, axis=0)[:rows], ds, axis=1)
                full = full[:rows, : f1 - f0]
            else:
                f0, f1 = np.searchsorted(self.cols, [p0, p1]).tolist()
                full = mask[owner - start][:, self.cols[f0:f1]]
            span = (int(f0), np.ascontiguousarray(full))
        self.next_row += rows
        self.pending.append((rows, span))
        self.pending_rows += rows
        self.stats.stitch_s += time.perf_counter() - begin
        self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        """Write whole rows of chunks (all that is left when ``final``)."""
        if not self.pending_rows:
            return
        n = self.pending_rows if final else self.pending_rows // self.chunk_rows * self.chunk_rows
        if n == 0:
            return
        begin = time.perf_counter()
        taken: list[tuple[int, tuple[int, NDArray[np.uint8]] | None]] = []
        wanted = n
        while wanted:
            rows, span = self.pending.pop(0)
            if rows > wanted:  # split: the rest waits for the next flush
                rest = None if span is None else (span[0], span[1][wanted:])
                self.pending.insert(0, (rows - wanted, rest))
                span = None if span is None else (span[0], span[1][:wanted])
                rows = wanted
            taken.append((rows, span))
            wanted -= rows
        self.pending_rows -= n
        spans = [(r, s) for r, s in taken if s is not None and s[1].shape[1]]
        if spans:
            # One block over the chunk columns the spans touch; the rest of the band is 0.
            chunk = self.chunk_cols
            c0 = min(s[0] for _, s in spans) // chunk * chunk
            c1 = max(s[0] + s[1].shape[1] for _, s in spans)
            c1 = min(self.full_shape[1], -(-c1 // chunk) * chunk)
            block = np.zeros((n, c1 - c0), dtype=np.uint8)
            row = 0
            for rows, span in taken:
                if span is not None:
                    f0, full = span
                    block[row : row + rows, f0 - c0 : f0 - c0 + full.shape[1]] = full
                row += rows
            _write_rows(self.store, self.written, block, col0=c0)
        self.written += n
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
