"""glomseg: find glomeruli in huge kidney whole-slide images.

The public API is listed in :data:`__all__`. Importing glomseg never imports
TensorFlow; the model (:class:`GlomUNet`) loads it on first use.
"""

from __future__ import annotations

import logging

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
from glomseg._reader import SlideReader
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
    DatasetError,
    GlomsegError,
    SlideReadError,
    WindowError,
)

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AnnotationError",
    "CoverageBand",
    "DatasetError",
    "Decision",
    "EdgePolicy",
    "GlomerulusOrSample",
    "GlomsegError",
    "MinTissue",
    "NotBlank",
    "SlideReadError",
    "SlideReader",
    "Tile",
    "TileFilter",
    "TileKey",
    "TilePredicate",
    "TileStats",
    "Tiler",
    "Window",
    "WindowError",
    "__version__",
    "parse_tile_name",
    "patchify_tiles",
    "tile_name",
    "tile_stats",
]
