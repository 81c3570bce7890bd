"""The settings of :func:`glomseg.predict_slide` and the timings of a run."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

import numpy as np

from glomseg.errors import look_up_option
from glomseg.model._backends import BACKENDS, PRECISIONS, BackendName, PrecisionName
from glomseg.predict._stitch import (
    BLENDINGS,
    GRID_EDGES,
    Blending,
    GridEdge,
    _default_stride,
)
from glomseg.tiles._tiling import _positive_int

if TYPE_CHECKING:
    pass

__all__ = ["PredictConfig", "PredictionStats"]


def _unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def _byte(name: str, value: object) -> int:
    """``value`` as an integer in ``[0, 255]``, else raise naming it."""
    level = _positive_int(name, value, minimum=0)
    if level > 255:
        raise ValueError(f"{name} must be in [0, 255], got {level}")
    return level


def _as_downsample(name: str, value: object) -> int | float:
    """A downsample factor: a whole one as ``int`` (the exact block path), else a float > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number > 0, got {value!r}")
    if isinstance(value, int | np.integer):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
        return int(value)
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return int(number) if number.is_integer() else number


@dataclass(frozen=True)
class PredictConfig:
    """How :func:`glomseg.predict_slide` tiles, predicts, blends and thresholds a slide.

    Parameters
    ----------
    tile_size : int, optional
        Tile side in pixels at prediction resolution (what the model sees), > 0.
        Default ``None``: the model's ``config.input_size``, or 512 for a
        predictor without one (see :func:`glomseg.predict.resolve_scale`).
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
        pixel size (see :func:`glomseg.predict.resolve_scale`); a value given here
        always wins.
    batch_size : int
        Tiles per predictor call, > 0.
    blending : {"gaussian", "mean", "crop"}
        How overlapping predictions are weighted (see :mod:`glomseg.predict._stitch`).
    tta : bool
        Average flip test-time augmentation (4 predictor calls per batch).
    threshold : float
        A pixel is in the mask when its blended probability is strictly greater,
        in ``[0, 1)``.
    min_confidence : float, optional
        Remove every 8-connected region of the thresholded mask (at prediction
        resolution) whose mean probability is below this, in ``[0, 1)``; 0 keeps
        every region (see :mod:`glomseg.predict._objects`). Default ``None``: the model's
        ``config.min_confidence`` (chosen on its training images), else 0.
    edge : {"shift", "pad"}
        The last tile along an axis ends at the slide edge (``"shift"``), or
        extends past it and is padded with white glass (``"pad"``).
    skip_background : bool
        Do not predict tiles without tissue; they count as probability 0.
    saturation_threshold : int
        A pixel is tissue when its HSV saturation (0-255) is strictly greater,
        the rule of :func:`glomseg.tiles.tile_stats`; in ``[0, 255]``.
    dark_threshold : int or None
        A pixel is tissue, too, when its darkest channel is at most this (it
        absorbs light where glass does not) and it is not black padding (see
        :func:`glomseg.io.tissue_pixels`), so that greyscale scans and very pale
        stains are predicted; in ``[0, 255]``, default 215. None counts
        saturated pixels only.
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
    workers : int, optional
        Threads that read, downsample and classify the slide ahead of the
        predictor, >= 1; default ``None``: the machine's cores. The mask does
        not depend on it.
    backend : {"auto", "tensorflow", "openvino"}
        Where a :class:`~glomseg.GlomUNet` runs (see
        :meth:`GlomUNet.compiled <glomseg.GlomUNet.compiled>`): ``"auto"`` is
        OpenVINO where the ``openvino`` extra is installed and TensorFlow sees no
        GPU, else TensorFlow.
        Other predictors run as they are, and must leave it ``"auto"``.
    precision : {"auto", "float32", "bfloat16", "int8"}
        The model's arithmetic: ``"auto"`` is bfloat16 on CPUs that compute it
        natively (AVX-512 BF16 or AMX), else float32; their masks agree with
        float32 ones to a Dice of 0.99 or more. ``"int8"`` runs the model's int8
        network on OpenVINO (``glomeruli-crosslab`` has one, see
        :meth:`GlomUNet.quantize_int8 <glomseg.GlomUNet.quantize_int8>`), about
        1.7 times as fast as float32, with masks that agree less well on other
        labs' slides (see :doc:`/benchmarks`).

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
    min_confidence: float | None = None
    edge: GridEdge = "shift"
    skip_background: bool = True
    saturation_threshold: int = 40
    dark_threshold: int | None = 215
    min_tissue: float = 0.0
    prefetch: int = 64
    chunk_size: int = 1024
    workers: int | None = None
    backend: BackendName = "auto"
    precision: PrecisionName = "auto"

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
        look_up_option("backend", self.backend, BACKENDS)
        look_up_option("precision", self.precision, PRECISIONS)
        for name in ("tta", "skip_background"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "threshold", _unit_interval("threshold", self.threshold))
        object.__setattr__(self, "min_tissue", _unit_interval("min_tissue", self.min_tissue))
        if self.min_confidence is not None:
            confidence = _unit_interval("min_confidence", self.min_confidence)
            object.__setattr__(self, "min_confidence", confidence)
        sat = _byte("saturation_threshold", self.saturation_threshold)
        object.__setattr__(self, "saturation_threshold", sat)
        if self.dark_threshold is not None:
            object.__setattr__(self, "dark_threshold", _byte("dark_threshold", self.dark_threshold))
        object.__setattr__(self, "prefetch", _positive_int("prefetch", self.prefetch))
        chunk = _positive_int("chunk_size", self.chunk_size, minimum=16)
        if chunk % 16:
            raise ValueError(f"chunk_size must be a multiple of 16, got {chunk}")
        object.__setattr__(self, "chunk_size", chunk)
        if self.workers is not None:
            object.__setattr__(self, "workers", _positive_int("workers", self.workers))

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
    """Where the time of a :func:`glomseg.predict_slide` run went.

    Stage times are the busy seconds of each stage, summed over the threads
    that run it, so they may add up to more than ``wall_s``.

    Attributes
    ----------
    tiles, predicted, skipped : int
        Tiles in the grid, tiles sent to the predictor, background tiles skipped.
    wall_s : float
        Wall-clock seconds of the whole run.
    read_s : float
        Reader threads: reading the slide, resampling and tissue detection (summed
        over the ``workers`` threads), and cutting tiles.
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
    >>> from glomseg import predict_slide
    >>> from glomseg.io.synthetic import write_synthetic_slide
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
