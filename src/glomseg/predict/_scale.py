"""Physical scale in prediction: which tile size and downsample a model needs.

A model records the pixel size (micrometres per pixel) of the images its
network saw, ``model.config.pixel_size_um``. To predict an input of another
pixel size, the input is resampled by ``downsample = model pixel size / input
pixel size`` so that glomeruli have the size the model learned; the factor may
be fractional, or below 1 to upsample a low-resolution input.
:func:`resolve_scale` holds the rules, shared by :func:`glomseg.predict_slide`
and :func:`predict_image`.

Resampling is the same everywhere: prediction pixel ``i`` is the exact area
average of full-resolution ``[i * downsample, (i + 1) * downsample)`` along each
axis (pixels past the edge count as white glass), and full-resolution pixel
``r`` takes the prediction of pixel ``floor((r + 0.5) / downsample)``, the
pixel-centre rule. For a whole factor that is a block mean and a block repeat.
One exception: :func:`glomseg.predict_slide` reads a slide that has pyramid
levels at or below the downsample from the nearest such level (which its scanner
made from full resolution) and averages that level, so its mask there can differ
slightly from :func:`predict_image`'s on the full-resolution pixels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glomseg.io._reader import _grid_average
from glomseg.io._resample import _block_mean, _edges
from glomseg.io._tissue import tissue_pixels
from glomseg.io._window import Window
from glomseg.predict._predict_config import PredictConfig, _as_downsample
from glomseg.predict._stitch import (
    Predictor,
    check_probabilities,
    flip_tta,
    prediction_shape,
    sliding_window_predict,
)
from glomseg.tiles._tiling import _positive_int

__all__ = ["predict_image", "resolve_scale"]

logger = logging.getLogger(__name__)

#: Tile side without a config or a model that knows its input size.
DEFAULT_TILE_SIZE = 512
#: Downsample without a config, a model config or pixel sizes.
DEFAULT_DOWNSAMPLE = 2


def _pixel_size(name: str, value: object) -> float | None:
    """``None``, or a pixel size checked to be a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number of micrometres per pixel, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _snap(ratio: float) -> int | float:
    """A ratio within floating-point noise (1e-6) of a whole number >= 1 becomes that int."""
    whole = round(ratio)
    if whole >= 1 and abs(ratio - whole) <= 1e-6 * ratio:
        return int(whole)
    return ratio


def resolve_scale(
    model: object,
    input_pixel_size_um: float | None = None,
    *,
    config: PredictConfig | None = None,
) -> tuple[int, int | float]:
    """The tile size and downsample to predict an input with a model.

    Tile size: ``config.tile_size``; else the model's ``config.input_size``;
    else 512. Downsample (full resolution to the network's input): an explicit
    ``config.downsample`` always wins; else, when both the model's
    ``config.pixel_size_um`` and the input's pixel size are known, their ratio
    ``model / input`` (a ratio within 1e-6 of a whole number is that whole
    number); else the model's training ``config.downsample``; else 2. The choice
    and its reason are logged at INFO.

    Parameters
    ----------
    model : object
        A predictor, optionally with a ``config`` that has ``input_size``,
        ``pixel_size_um`` and ``downsample`` (as :class:`glomseg.GlomUNet`);
        a plain function has none, and gets the defaults.
    input_pixel_size_um : float, optional
        Micrometres per full-resolution pixel of the input, > 0.
    config : PredictConfig, optional
        Its ``tile_size`` and ``downsample``, where not ``None``, win.

    Returns
    -------
    (int, int or float)
        ``(tile_size, downsample)``; a whole downsample is an ``int``.

    Raises
    ------
    ValueError, TypeError
        If a pixel size is not a finite number > 0, or the model's config holds
        an invalid value; the message names it.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> model = SimpleNamespace(config=SimpleNamespace(
    ...     input_size=256, pixel_size_um=2.0, downsample=2.0))
    >>> resolve_scale(model, 0.5)  # a slide scanned at 0.5 um/px
    (256, 4)
    >>> resolve_scale(model, 0.8)
    (256, 2.5)
    >>> resolve_scale(model)  # pixel size unknown: the model's training downsample
    (256, 2)
    >>> resolve_scale(lambda batch: batch[..., 0] / 255)  # a plain function
    (512, 2)
    >>> resolve_scale(model, -1)
    Traceback (most recent call last):
    ...
    ValueError: pixel_size_um must be a finite number > 0, got -1
    """
    model_config = getattr(model, "config", None)
    input_size = getattr(model_config, "input_size", None)
    if config is not None and config.tile_size is not None:
        tile_size, tile_why = config.tile_size, "the config"
    elif input_size is not None:
        tile_size = _positive_int("model.config.input_size", input_size)
        tile_why = "the model's input size"
    else:
        tile_size, tile_why = DEFAULT_TILE_SIZE, "the default"
    model_px = _pixel_size(
        "model.config.pixel_size_um", getattr(model_config, "pixel_size_um", None)
    )
    input_px = _pixel_size("pixel_size_um", input_pixel_size_um)
    trained = getattr(model_config, "downsample", None)
    downsample: int | float
    if config is not None and config.downsample is not None:
        downsample, why = config.downsample, "set in the config"
    elif model_px is not None and input_px is not None:
        downsample = _snap(model_px / input_px)
        why = f"model pixel size {model_px:g} um / input pixel size {input_px:g} um"
    elif trained is not None:
        downsample = _as_downsample("model.config.downsample", trained)
        unknown = "input" if model_px is not None else "model"
        why = f"the model's training downsample (the {unknown}'s pixel size is unknown)"
    else:
        downsample, why = DEFAULT_DOWNSAMPLE, "the default (no model config, no config)"
    logger.info(
        "scale: tile size %d (%s), downsample %g (%s)", tile_size, tile_why, downsample, why
    )
    return tile_size, downsample


# -- shared by predict_slide and predict_image -------------------------------------------------

#: Regions taller than this many tiles are kept whatever their confidence (see
#: :class:`glomseg.predict._objects.ObjectFilter`): a glomerulus is a fraction of a tile.
MAX_OBJECT_TILES = 8


def _min_confidence(model: object, config: PredictConfig) -> float:
    """The region confidence to apply: the config's, else the model's, else 0 (off)."""
    if config.min_confidence is not None:
        return config.min_confidence
    value = getattr(getattr(model, "config", None), "min_confidence", None)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"model.config.min_confidence must be in [0, 1), got {value!r}")
    return float(value)


def _stain_normalizer(model: object, stain: bool, override: object | None) -> Any:
    """The normaliser to apply: ``override``, else the model's, else none (or none if not stain)."""
    if not isinstance(stain, bool):
        raise TypeError(f"stain must be a bool, got {stain!r}")
    if not stain:
        return None
    name = "stain_normalizer" if override is not None else "model.stain_normalizer"
    normalizer = override if override is not None else getattr(model, "stain_normalizer", None)
    if normalizer is not None and not callable(getattr(normalizer, "transform", None)):
        raise TypeError(
            f"{name} must have a transform(image) method, got {type(normalizer).__name__}"
        )
    return normalizer


def _on_backend(model: Predictor, config: PredictConfig) -> Predictor:
    """``model`` compiled for the config's backend and precision, if it can be (a GlomUNet)."""
    compiled = getattr(model, "compiled", None)
    if callable(compiled):
        on_backend: Predictor = compiled(config.backend, config.precision)
        return on_backend
    if (config.backend, config.precision) != ("auto", "auto"):
        raise ValueError(
            f"backend={config.backend!r} and precision={config.precision!r} apply to a "
            f"GlomUNet, and the model is a {type(model).__name__}: leave both 'auto' for "
            "a predictor of your own"
        )
    return model


def _tile_model(predictor: Predictor, normalizer: Any, tta: bool) -> Predictor:
    """The callable a batch of tiles goes to: stain normalisation of each tile, then (TTA) model."""
    model: Predictor = flip_tta(predictor) if tta else predictor
    if normalizer is None:
        return model

    def normalised(batch: NDArray[np.uint8], /) -> NDArray[np.floating[Any]]:
        tiles = []
        for tile in batch:
            out = np.asarray(normalizer.transform(tile))
            if out.dtype != np.uint8 or out.shape != tile.shape:
                raise ValueError(
                    f"stain_normalizer.transform must return uint8 of shape {tile.shape}, "
                    f"got {out.dtype} of shape {out.shape}"
                )
            tiles.append(out)
        return model(np.stack(tiles))

    return normalised


def _centres(start: int, stop: int, downsample: float, n_pred: int) -> NDArray[np.intp]:
    """Prediction pixel of each full-resolution pixel ``start .. stop - 1`` (pixel-centre rule)."""
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5) / downsample
    index: NDArray[np.intp] = np.minimum(np.floor(centres).astype(np.intp), n_pred - 1)
    return index


def _to_prediction_grid(image: NDArray[np.uint8], downsample: int | float) -> NDArray[np.uint8]:
    """``image`` resampled to its prediction grid, exactly as predict_slide's reader does."""
    h, w = image.shape[:2]
    ph, pw = prediction_shape((h, w), downsample)
    if isinstance(downsample, int):
        if downsample == 1:
            return image
        padded = np.full((ph * downsample, pw * downsample, 3), 255, dtype=np.uint8)
        padded[:h, :w] = image
        return _block_mean(padded, downsample)

    def read(window: Window, out: NDArray[np.uint8]) -> None:
        out[...] = image[window.to_slices()]

    return _grid_average(read, (h, w), _edges(0, ph, downsample), _edges(0, pw, downsample))


def _to_full_resolution(
    mask: NDArray[Any], shape: tuple[int, int], downsample: int | float
) -> NDArray[Any]:
    """A prediction-grid mask mapped to full-resolution ``shape`` by the pixel-centre rule."""
    h, w = shape
    if isinstance(downsample, int):
        if downsample == 1:
            return mask
        return np.repeat(np.repeat(mask, downsample, axis=0)[:h], downsample, axis=1)[:, :w]
    rows = _centres(0, h, downsample, mask.shape[0])
    cols = _centres(0, w, downsample, mask.shape[1])
    return mask[rows][:, cols]


def _tissue_filter(predictor: Predictor, config: PredictConfig) -> Predictor:
    """Predict only tiles with tissue (the rule of predict_slide's reader); others get 0."""
    if not config.skip_background:
        return predictor

    def filtered(batch: NDArray[np.uint8], /) -> NDArray[np.floating[Any]]:
        n, t = batch.shape[0], batch.shape[1]
        counts = np.count_nonzero(
            tissue_pixels(
                batch.reshape(n * t, t, 3),
                saturation_threshold=config.saturation_threshold,
                dark_threshold=config.dark_threshold,
            ).reshape(n, t * t),
            axis=1,
        )
        keep = counts > config.min_tissue * t * t
        out = np.zeros(batch.shape[:3], dtype=np.float32)
        if keep.any():
            kept = np.ascontiguousarray(batch[keep])
            out[keep] = check_probabilities(predictor(kept), len(kept), (t, t))
        return out

    return filtered


def predict_image(
    image: NDArray[np.uint8],
    model: Predictor,
    *,
    pixel_size_um: float | None = None,
    tta: bool | None = None,
    threshold: float | None = None,
    config: PredictConfig | None = None,
    stain: bool = True,
) -> NDArray[np.bool_]:
    """Predict the glomerulus mask of an in-memory RGB image of any size and pixel size.

    The in-memory counterpart of :func:`glomseg.predict_slide`, with the same
    scale rules (:func:`resolve_scale`), resampling (exact area average to the
    prediction grid, pixel-centre rule back), grid, blending, background
    skipping, stain normalisation and TTA: on the same pixels it gives the same
    mask, pixel for pixel (where ``predict_slide`` reads full resolution, not a
    pyramid level; see the module notes). Built on
    :func:`glomseg.sliding_window_predict`.

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` RGB of shape ``(H, W, 3)``.
    model : Predictor
        ``(n, t, t, 3) uint8 -> (n, t, t)`` probabilities; its optional
        ``config`` (``input_size``, ``pixel_size_um``, ``downsample``) and
        ``stain_normalizer`` are used as :func:`glomseg.predict_slide` does.
    pixel_size_um : float, optional
        Micrometres per pixel of ``image``; unknown by default (the model's
        training downsample is used).
    tta : bool, optional
        Flip test-time augmentation; default ``config.tta`` when a config is
        given, else True.
    threshold : float, optional
        A pixel is in the mask when its blended probability is strictly
        greater; default ``config.threshold`` when a config is given, else 0.5.
    config : PredictConfig, optional
        Tile size, stride, downsample, blending, batch and background options
        (``None`` fields come from the model, see :func:`resolve_scale`).
    stain : bool
        Apply the model's ``stain_normalizer.transform`` to each tile, if it has one.

    Returns
    -------
    numpy.ndarray
        ``bool`` mask of shape ``(H, W)``.

    Raises
    ------
    ValueError, TypeError
        If the image is not ``uint8`` ``(H, W, 3)``, a pixel size is not a
        finite number > 0, or the predictor's output is invalid.

    Examples
    --------
    A colour rule as the model, with a model pixel size of 1 um on an image of
    0.4 um pixels (so a fractional downsample of 2.5):

    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> def dark(batch: np.ndarray) -> np.ndarray:
    ...     return (batch[..., 1] < 128).astype(np.float32)
    >>> dark.config = SimpleNamespace(input_size=32, pixel_size_um=1.0, downsample=2)
    >>> image = np.full((50, 70, 3), 230, dtype=np.uint8)
    >>> image[10:30, 20:45] = (150, 60, 150)  # a purple block
    >>> mask = predict_image(image, dark, pixel_size_um=0.4, tta=False)
    >>> mask.shape, int(mask.sum()), bool(mask[10:30, 20:45].all())
    ((50, 70), 500, True)
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(
            f"image must be uint8 of shape (H, W, 3), got {array.dtype} of shape {array.shape}"
        )
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    cfg = PredictConfig() if config is None else config
    if not isinstance(cfg, PredictConfig):
        raise TypeError(f"config must be a PredictConfig, got {type(cfg).__name__}")
    options: dict[str, Any] = {}
    if tta is not None:
        options["tta"] = tta
    elif config is None:
        options["tta"] = True
    if threshold is not None:
        options["threshold"] = threshold
    tile_size, downsample = resolve_scale(model, pixel_size_um, config=cfg)
    options["min_confidence"] = _min_confidence(model, cfg)
    cfg = replace(cfg, tile_size=tile_size, downsample=downsample, **options)
    normalizer = _stain_normalizer(model, stain, None)
    predictor = _tissue_filter(_tile_model(_on_backend(model, cfg), normalizer, cfg.tta), cfg)
    h, w = array.shape[:2]
    low = _to_prediction_grid(array, downsample)
    probs = sliding_window_predict(
        low,
        predictor,
        tile_size=tile_size,
        stride=cfg.grid_stride,
        edge=cfg.edge,
        blending=cfg.blending,
        batch_size=cfg.batch_size,
    )
    if cfg.min_confidence:
        from glomseg.predict._objects import filter_objects

        max_rows = MAX_OBJECT_TILES * tile_size
        mask = filter_objects(probs, cfg.threshold, cfg.min_confidence, max_rows)
    else:
        mask = probs > np.float32(cfg.threshold)
    result: NDArray[np.bool_] = _to_full_resolution(mask, (h, w), downsample)
    return result
