"""glomseg: find glomeruli in huge kidney whole-slide images.

The public API is listed in :data:`__all__`. Importing glomseg never imports
TensorFlow; the model (:class:`GlomUNet`) loads it on first use.
"""

from __future__ import annotations

import logging

from glomseg._annotations import (
    DEFAULT_MIN_AREA,
    GLOMERULUS_COLOR,
    Annotation,
    PolygonalGeometry,
    annotations_outside,
    as_polygonal,
    parse_annotations,
    read_annotations,
    write_annotations,
)
from glomseg._augment import Augmentation
from glomseg._datasets import SplitName, TileRecord, make_datasets, read_records, split_tiles
from glomseg._distributed import ModelSource, SlideOutcome, SlidesReport, predict_slides
from glomseg._evaluate import DiceReport, SlideDice, evaluate_slide, evaluate_slides
from glomseg._export import (
    MANIFEST_COLUMNS,
    ExportSummary,
    SlideSource,
    export_tiles,
    read_manifest,
)
from glomseg._filtering import (
    CoverageBand,
    Decision,
    GlomerulusOrSample,
    MinTissue,
    NotBlank,
    TileFilter,
    TilePredicate,
    TileStats,
    tile_stats,
    tissue_pixels,
)
from glomseg._losses import (
    LOSS_SMOOTH,
    LossName,
    bce_dice_loss,
    bce_lovasz_loss,
    dice_loss,
    dice_metric,
    lovasz_hinge_loss,
)
from glomseg._metrics import dice_coefficient, mean_dice, soft_dice
from glomseg._model import GlomUNet, ModelConfig, ScheduleName
from glomseg._overlay import write_overlay
from glomseg._predict import predict_slide
from glomseg._predict_config import PredictConfig, PredictionStats
from glomseg._pretrained import ModelCard, available_models
from glomseg._rasterize import (
    BOUNDARY_TOLERANCE,
    DEFAULT_SPECK_AREA,
    MaskRasterizer,
    mask_to_annotations,
    mask_to_polygons,
)
from glomseg._reader import SlideReader
from glomseg._recipe import TrainingRecipe
from glomseg._rle import read_submission, rle_decode, rle_encode, write_submission
from glomseg._sampling import CropSampler, load_training_images, make_crop_dataset
from glomseg._scale import predict_image, resolve_scale
from glomseg._slide_mask import MaskLike, SlideMask, write_submission_csv
from glomseg._stain import (
    MIN_STAIN_PIXELS,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainMethod,
    StainNormalizer,
    fit_stain_normalizer,
    normalizer_from_dict,
)
from glomseg._stitch import (
    BandStitcher,
    Blending,
    GridEdge,
    Predictor,
    flip_tta,
    sliding_window_predict,
)
from glomseg._tiling import (
    EdgePolicy,
    Tile,
    TileKey,
    Tiler,
    parse_tile_name,
    patchify_tiles,
    tile_name,
)
from glomseg._window import Window
from glomseg.errors import (
    AnnotationError,
    AnnotationWarning,
    DatasetError,
    GlomsegError,
    PretrainedWeightsError,
    RLEError,
    SlideReadError,
    SlideReadWarning,
    SlideTaskError,
    WindowError,
)

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Annotation",
    "AnnotationError",
    "AnnotationWarning",
    "Augmentation",
    "BOUNDARY_TOLERANCE",
    "BandStitcher",
    "Blending",
    "CoverageBand",
    "CropSampler",
    "DEFAULT_MIN_AREA",
    "DEFAULT_SPECK_AREA",
    "DatasetError",
    "Decision",
    "DiceReport",
    "EdgePolicy",
    "ExportSummary",
    "GLOMERULUS_COLOR",
    "GlomUNet",
    "GlomerulusOrSample",
    "GlomsegError",
    "GridEdge",
    "LOSS_SMOOTH",
    "LossName",
    "MANIFEST_COLUMNS",
    "MIN_STAIN_PIXELS",
    "MacenkoNormalizer",
    "MaskLike",
    "MaskRasterizer",
    "MinTissue",
    "ModelCard",
    "ModelConfig",
    "ModelSource",
    "NotBlank",
    "PolygonalGeometry",
    "PredictConfig",
    "PredictionStats",
    "Predictor",
    "PretrainedWeightsError",
    "RLEError",
    "ReinhardNormalizer",
    "ScheduleName",
    "SlideDice",
    "SlideMask",
    "SlideOutcome",
    "SlideReadError",
    "SlideReadWarning",
    "SlideReader",
    "SlideSource",
    "SlideTaskError",
    "SlidesReport",
    "SplitName",
    "StainMethod",
    "StainNormalizer",
    "Tile",
    "TileFilter",
    "TileKey",
    "TilePredicate",
    "TileRecord",
    "TileStats",
    "Tiler",
    "TrainingRecipe",
    "Window",
    "WindowError",
    "__version__",
    "annotations_outside",
    "as_polygonal",
    "available_models",
    "bce_dice_loss",
    "bce_lovasz_loss",
    "dice_coefficient",
    "dice_loss",
    "dice_metric",
    "evaluate_slide",
    "evaluate_slides",
    "export_tiles",
    "fit_stain_normalizer",
    "flip_tta",
    "load_training_images",
    "lovasz_hinge_loss",
    "make_crop_dataset",
    "make_datasets",
    "mask_to_annotations",
    "mask_to_polygons",
    "mean_dice",
    "normalizer_from_dict",
    "parse_annotations",
    "parse_tile_name",
    "patchify_tiles",
    "predict_image",
    "predict_slide",
    "predict_slides",
    "read_annotations",
    "read_manifest",
    "read_records",
    "read_submission",
    "resolve_scale",
    "rle_decode",
    "rle_encode",
    "sliding_window_predict",
    "soft_dice",
    "split_tiles",
    "tile_name",
    "tile_stats",
    "tissue_pixels",
    "write_annotations",
    "write_overlay",
    "write_submission",
    "write_submission_csv",
]
