"""glomseg: find glomeruli in huge kidney whole-slide images.

The pipeline's stages are subpackages, lowest first, each importing only those
below it: :mod:`glomseg.io` (reading slides), :mod:`glomseg.annotations`
(polygons, masks, RLE), :mod:`glomseg.tiles` (tiling a training set),
:mod:`glomseg.model` (the U-Net and its training), :mod:`glomseg.predict`
(whole-slide prediction), :mod:`glomseg.evaluate` (Dice) and
:mod:`glomseg.distributed` (many slides on a cluster); :mod:`glomseg.errors`
holds the exceptions. This module re-exports the names most users start with,
listed in :data:`__all__`; everything else lives in its stage. Importing glomseg
never imports TensorFlow or Dask.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

from glomseg.annotations import (
    MaskRasterizer,
    mask_to_polygons,
    read_annotations,
    read_submission,
    rle_decode,
    rle_encode,
    write_annotations,
    write_submission,
)
from glomseg.distributed import (
    predict_slides,
)
from glomseg.errors import GlomsegError
from glomseg.evaluate import (
    dice_coefficient,
    evaluate_slide,
    evaluate_slides,
)
from glomseg.io import (
    SlideReader,
    Window,
)
from glomseg.model import (
    Augmentation,
    GlomUNet,
    TrainingRecipe,
    load_training_images,
)
from glomseg.predict import (
    PredictConfig,
    SlideMask,
    predict_image,
    predict_slide,
    sliding_window_predict,
)
from glomseg.tiles import (
    SlideSource,
    TileFilter,
    Tiler,
    export_tiles,
)

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Names that left the top level in 0.2, and the module that holds each now.
_MOVED = {
    "Annotation": "glomseg.annotations",
    "AnnotationError": "glomseg.errors",
    "AnnotationWarning": "glomseg.errors",
    "BOUNDARY_TOLERANCE": "glomseg.annotations",
    "BandStitcher": "glomseg.predict",
    "Blending": "glomseg.predict",
    "CoverageBand": "glomseg.tiles",
    "CropSampler": "glomseg.model",
    "DEFAULT_MIN_AREA": "glomseg.annotations",
    "DEFAULT_SPECK_AREA": "glomseg.annotations",
    "DatasetError": "glomseg.errors",
    "Decision": "glomseg.tiles",
    "DiceReport": "glomseg.evaluate",
    "EdgePolicy": "glomseg.tiles",
    "ExportSummary": "glomseg.tiles",
    "GLOMERULUS_COLOR": "glomseg.annotations",
    "GlomerulusOrSample": "glomseg.tiles",
    "GridEdge": "glomseg.predict",
    "LOSS_SMOOTH": "glomseg.model",
    "LossName": "glomseg.model",
    "MANIFEST_COLUMNS": "glomseg.tiles",
    "MIN_STAIN_PIXELS": "glomseg.model",
    "MacenkoNormalizer": "glomseg.model",
    "MaskLike": "glomseg.predict",
    "MinTissue": "glomseg.tiles",
    "ModelCard": "glomseg.model",
    "ModelConfig": "glomseg.model",
    "ModelSource": "glomseg.distributed",
    "NotBlank": "glomseg.tiles",
    "PolygonalGeometry": "glomseg.annotations",
    "PredictionStats": "glomseg.predict",
    "Predictor": "glomseg.predict",
    "PretrainedWeightsError": "glomseg.errors",
    "RLEError": "glomseg.errors",
    "ReinhardNormalizer": "glomseg.model",
    "ScheduleName": "glomseg.model",
    "SlideDice": "glomseg.evaluate",
    "SlideOutcome": "glomseg.distributed",
    "SlideReadError": "glomseg.errors",
    "SlideReadWarning": "glomseg.errors",
    "SlideTaskError": "glomseg.errors",
    "SlidesReport": "glomseg.distributed",
    "SplitName": "glomseg.model",
    "StainMethod": "glomseg.model",
    "StainNormalizer": "glomseg.model",
    "Tile": "glomseg.tiles",
    "TileKey": "glomseg.tiles",
    "TilePredicate": "glomseg.tiles",
    "TileRecord": "glomseg.model",
    "TileStats": "glomseg.tiles",
    "WindowError": "glomseg.errors",
    "annotations_outside": "glomseg.annotations",
    "as_polygonal": "glomseg.annotations",
    "available_models": "glomseg.model",
    "bce_dice_loss": "glomseg.model",
    "bce_lovasz_loss": "glomseg.model",
    "dice_loss": "glomseg.model",
    "dice_metric": "glomseg.model",
    "fit_stain_normalizer": "glomseg.model",
    "flip_tta": "glomseg.predict",
    "lovasz_hinge_loss": "glomseg.model",
    "make_crop_dataset": "glomseg.model",
    "make_datasets": "glomseg.model",
    "mask_to_annotations": "glomseg.annotations",
    "mean_dice": "glomseg.evaluate",
    "normalizer_from_dict": "glomseg.model",
    "parse_annotations": "glomseg.annotations",
    "parse_tile_name": "glomseg.tiles",
    "patchify_tiles": "glomseg.tiles",
    "read_manifest": "glomseg.tiles",
    "read_records": "glomseg.model",
    "resolve_scale": "glomseg.predict",
    "soft_dice": "glomseg.evaluate",
    "split_tiles": "glomseg.model",
    "tile_name": "glomseg.tiles",
    "tile_stats": "glomseg.tiles",
    "tissue_pixels": "glomseg.io",
    "write_overlay": "glomseg.evaluate",
    "write_submission_csv": "glomseg.predict",
}


def __getattr__(name: str) -> Any:
    """Old top-level names still resolve for one release, with a DeprecationWarning."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'glomseg' has no attribute {name!r}")
    warnings.warn(
        f"glomseg.{name} has moved to {home}.{name}; the old name will be removed in "
        f"glomseg 0.3 (import it from {home})",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))


__all__ = [
    "Augmentation",
    "GlomUNet",
    "GlomsegError",
    "MaskRasterizer",
    "PredictConfig",
    "SlideMask",
    "SlideReader",
    "SlideSource",
    "TileFilter",
    "Tiler",
    "TrainingRecipe",
    "Window",
    "__version__",
    "dice_coefficient",
    "evaluate_slide",
    "evaluate_slides",
    "export_tiles",
    "load_training_images",
    "mask_to_polygons",
    "predict_image",
    "predict_slide",
    "predict_slides",
    "read_annotations",
    "read_submission",
    "rle_decode",
    "rle_encode",
    "sliding_window_predict",
    "write_annotations",
    "write_submission",
]
