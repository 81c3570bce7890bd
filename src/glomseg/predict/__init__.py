"""Prediction: whole slides and images, overlapping blended windows, the slide mask.

:func:`predict_slide` predicts a whole slide window by window into a
:class:`SlideMask` (a zarr store at full resolution); :func:`predict_image` does
the same for an image in memory; :class:`PredictConfig` holds the options and
:func:`sliding_window_predict` the blended stitching, for any predictor.

May import: :mod:`glomseg.io`, :mod:`glomseg.annotations`, :mod:`glomseg.tiles`,
:mod:`glomseg.model` and :mod:`glomseg.errors`.
"""

from __future__ import annotations

from glomseg.predict._predict import predict_slide
from glomseg.predict._predict_config import (
    PredictConfig,
    PredictionStats,
)
from glomseg.predict._scale import (
    predict_image,
    resolve_scale,
)
from glomseg.predict._slide_mask import (
    MaskLike,
    SlideMask,
    write_submission_csv,
)
from glomseg.predict._stitch import (
    BandStitcher,
    Blending,
    GridEdge,
    Predictor,
    flip_tta,
    sliding_window_predict,
)

__all__ = [
    "BandStitcher",
    "Blending",
    "GridEdge",
    "MaskLike",
    "PredictConfig",
    "PredictionStats",
    "Predictor",
    "SlideMask",
    "flip_tta",
    "predict_image",
    "predict_slide",
    "resolve_scale",
    "sliding_window_predict",
    "write_submission_csv",
]
