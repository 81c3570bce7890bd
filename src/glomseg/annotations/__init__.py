"""Glomerulus polygons and masks: reading, rasterizing, tracing and run-length encoding.

:func:`read_annotations` reads QuPath/HuBMAP GeoJSON, :class:`MaskRasterizer`
turns polygons into masks by the pixel-centre rule, :func:`mask_to_polygons`
traces masks back into polygons, and :func:`rle_encode` / :func:`write_submission`
write the Kaggle run-length encoding.

May import: :mod:`glomseg.io` and :mod:`glomseg.errors`.
"""

from __future__ import annotations

from glomseg.annotations._annotations import (
    DEFAULT_MIN_AREA,
    GLOMERULUS_COLOR,
    Annotation,
    PolygonalGeometry,
    annotations_outside,
    as_polygonal,
    clip_to_slide,
    parse_annotations,
    read_annotations,
    write_annotations,
)
from glomseg.annotations._rasterize import (
    BOUNDARY_TOLERANCE,
    DEFAULT_SPECK_AREA,
    MaskRasterizer,
    mask_to_annotations,
    mask_to_polygons,
)
from glomseg.annotations._rle import (
    read_submission,
    rle_decode,
    rle_encode,
    write_submission,
)

__all__ = [
    "Annotation",
    "BOUNDARY_TOLERANCE",
    "DEFAULT_MIN_AREA",
    "DEFAULT_SPECK_AREA",
    "GLOMERULUS_COLOR",
    "MaskRasterizer",
    "PolygonalGeometry",
    "annotations_outside",
    "as_polygonal",
    "clip_to_slide",
    "mask_to_annotations",
    "mask_to_polygons",
    "parse_annotations",
    "read_annotations",
    "read_submission",
    "rle_decode",
    "rle_encode",
    "write_annotations",
    "write_submission",
]
