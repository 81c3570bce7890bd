"""Whole-slide prediction in bounded memory, its outputs, and whole-slide Dice.

:func:`predict_slide` runs any :class:`~glomseg.predict.Predictor` over a slide and
writes a full-resolution :class:`SlideMask`:

0. The tile size and ``downsample`` come from the config, else from the model
   and the slide's pixel size (:func:`glomseg.predict.resolve_scale`), so that
   glomeruli have the size the model learned.
1. A reader thread reads the slide band by band of rows at the prediction
   resolution (``downsample``, whole or fractional: each prediction pixel is
   the area average of its footprint, at full resolution or in the nearest
   pyramid level at or below the downsample where the slide has one), each
   pixel decoded about once, and cuts the bands into overlapping tiles of a
   regular grid. Tiles with no tissue (no pixel whose HSV saturation exceeds
   ``saturation_threshold`` or, unless ``dark_threshold`` is None, whose
   darkest channel is at most ``dark_threshold``: see
   :func:`glomseg.io.tissue_pixels`) are marked as background and never reach
   the predictor. Tiles wait in a bounded queue, so reading runs ahead of the
   predictor.
2. The calling thread only batches tiles and calls the predictor (after the
   model's stain normaliser, optionally with flip test-time augmentation), so
   the model is never idle on stitching.
3. A writer thread blends the predictions into a :class:`~glomseg.predict.BandStitcher`,
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

The settings are a :class:`~glomseg.PredictConfig`; the threads live in
:mod:`glomseg.predict._predict_threads`, the mask store and its exports in
:mod:`glomseg.predict._slide_mask`, whole-slide Dice in :mod:`glomseg.evaluate._evaluate` and
overlays in :mod:`glomseg.evaluate._overlay`.
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
import weakref
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from glomseg.io._reader import SlideReader
from glomseg.predict._predict_config import PredictConfig, PredictionStats
from glomseg.predict._predict_threads import _END, _POLL_S, _Failure, _MaskWriter, _TileReader
from glomseg.predict._scale import (
    _min_confidence,
    _on_backend,
    _stain_normalizer,
    _tile_model,
    resolve_scale,
)
from glomseg.predict._slide_mask import SlideMask, _atomic_dir, _create_store
from glomseg.predict._stitch import (
    BandStitcher,
    Predictor,
    check_probabilities,
    prediction_shape,
)

if TYPE_CHECKING:
    pass

__all__ = ["predict_slide"]

logger = logging.getLogger(__name__)

#: Segment cache of a slide that :func:`predict_slide` opens itself.
_CACHE_BYTES = 192 * 2**20


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
        ``None`` (see :func:`glomseg.predict.resolve_scale`), and its
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
    >>> from glomseg.io.synthetic import write_synthetic_slide
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
    # Reader threads decode pieces of whole segments in parallel, one decoder thread
    # each, top to bottom: the cache only keeps the segments a fractional downsample's
    # pieces share at their edges, one row of segments.
    with SlideReader(slide, cache_bytes=0, max_workers=1) as probe:
        seg_h = probe.segment_shape[0]
        cache = min(_CACHE_BYTES, 2 * seg_h * probe.shape[1] * 3)
    with SlideReader(slide, cache_bytes=cache, max_workers=1) as reader:
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
    if pixel_size_um is None:  # recorded with the mask even where the config sets the scale
        pixel_size_um = reader.pixel_size_um
    tile_size, ds = resolve_scale(predictor, pixel_size_um, config=cfg)
    confidence = _min_confidence(predictor, cfg)
    cfg = replace(cfg, tile_size=tile_size, downsample=ds, min_confidence=confidence)
    full_shape = reader.shape
    stitcher = BandStitcher(
        prediction_shape(full_shape, ds),
        tile_size,
        cfg.grid_stride,
        edge=cfg.edge,
        blending=cfg.blending,
    )
    stats = PredictionStats(tiles=math.prod(stitcher.grid_shape))
    on_backend = _on_backend(predictor, cfg)  # may refuse: before anything is made on disk
    model = _tile_model(on_backend, normalizer, cfg.tta)
    temporary = out is None
    target = Path(tempfile.mkdtemp(prefix="glomseg-")) / "mask.zarr" if out is None else Path(out)
    attributes = {
        "source": str(reader.path),
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "downsample": ds,
        "pixel_size_um": None if pixel_size_um is None else float(pixel_size_um),
        "backend": getattr(on_backend, "backend", None),
        "precision": getattr(on_backend, "precision", None),
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
            try:
                tile_reader.start()
                writer.start()
                _drive(model, stitcher, cfg, tiles, slots, tile_reader, writer, stats, bar)
                writer.send(_END)
                writer.join()
                if writer.error is not None:
                    raise writer.error
            finally:
                stop.set()
                bar.close()
                if tile_reader.ident is not None:  # started
                    tile_reader.join()
                if writer.is_alive():
                    writer.abort.set()
                    writer.join()
        mask = SlideMask(target)
    except BaseException:
        if temporary:  # the folder made above for the mask
            shutil.rmtree(target.parent, ignore_errors=True)
        raise
    stats.wall_s = time.perf_counter() - wall
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
        raw = model(images)
        probs = check_probabilities(raw, len(batch), (t, t))
        if isinstance(raw, np.ndarray) and np.may_share_memory(probs, raw):
            probs = probs.copy()  # the writer blends it later: the predictor may reuse its buffer
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
