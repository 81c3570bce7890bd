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
)
from glomseg._metrics import dice_coefficient, mean_dice, soft_dice
from glomseg._rasterize import (
    BOUNDARY_TOLERANCE,
    DEFAULT_SPECK_AREA,
    MaskRasterizer,
    mask_to_annotations,
    mask_to_polygons,
)
from glomseg._reader import SlideReader
from glomseg._rle import read_submission, rle_decode, rle_encode, write_submission
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
    SlideReadError,
    WindowError,
)

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Annotation",
    "AnnotationError",
    "AnnotationWarning",
    "BOUNDARY_TOLERANCE",
    "CoverageBand",
    "DEFAULT_MIN_AREA",
    "DEFAULT_SPECK_AREA",
    "DatasetError",
    "Decision",
    "EdgePolicy",
    "ExportSummary",
    "GLOMERULUS_COLOR",
    "GlomerulusOrSample",
    "GlomsegError",
    "MANIFEST_COLUMNS",
    "MaskRasterizer",
    "MinTissue",
    "NotBlank",
    "PolygonalGeometry",
    "SlideReadError",
    "SlideReader",
    "SlideSource",
    "Tile",
    "TileFilter",
    "TileKey",
    "TilePredicate",
    "TileStats",
    "Tiler",
    "Window",
    "WindowError",
    "__version__",
    "annotations_outside",
    "as_polygonal",
    "dice_coefficient",
    "export_tiles",
    "mask_to_annotations",
    "mask_to_polygons",
    "mean_dice",
    "parse_annotations",
    "parse_tile_name",
    "patchify_tiles",
    "read_annotations",
    "read_manifest",
    "read_submission",
    "rle_decode",
    "rle_encode",
    "soft_dice",
    "tile_name",
    "tile_stats",
    "write_annotations",
    "write_submission",
]
