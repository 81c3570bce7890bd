"""Tiling slides into a training set: grids of windows, tile filters and tile export.

:class:`Tiler` lays windows over a slide, :class:`TileFilter` keeps the tiles
whose mask coverage and tissue are in range, and :func:`export_tiles` writes
image and mask tiles with a manifest.

May import: :mod:`glomseg.io`, :mod:`glomseg.annotations` and :mod:`glomseg.errors`.
"""

from __future__ import annotations

from glomseg.tiles._export import (
    MANIFEST_COLUMNS,
    ExportSummary,
    SlideSource,
    export_tiles,
    read_manifest,
)
from glomseg.tiles._filtering import (
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
from glomseg.tiles._tiling import (
    EdgePolicy,
    Tile,
    TileKey,
    Tiler,
    parse_tile_name,
    patchify_tiles,
    tile_name,
)

__all__ = [
    "CoverageBand",
    "Decision",
    "EdgePolicy",
    "ExportSummary",
    "GlomerulusOrSample",
    "MANIFEST_COLUMNS",
    "MinTissue",
    "NotBlank",
    "SlideSource",
    "Tile",
    "TileFilter",
    "TileKey",
    "TilePredicate",
    "TileStats",
    "Tiler",
    "export_tiles",
    "parse_tile_name",
    "patchify_tiles",
    "read_manifest",
    "tile_name",
    "tile_stats",
]
