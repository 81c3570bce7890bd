"""Polygon geometry of annotations: GeoJSON to shapely and back, coordinate checks, repair.

Every geometry glomseg accepts is a ``Polygon`` or ``MultiPolygon`` with finite
coordinates below ``2**31`` pixels. An invalid one (self-intersecting, say) is
repaired with :func:`shapely.make_valid`, within bounds that keep the repair
under about a second; beyond them it is refused with an error naming the file
and the feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon

from glomseg.errors import AnnotationError

__all__ = ["PolygonalGeometry"]

PolygonalGeometry: TypeAlias = Polygon | MultiPolygon
"""A shapely ``Polygon`` or ``MultiPolygon``."""

_ALLOWED_GEOMETRY_TYPES = ("MultiPolygon", "Polygon")

#: Coordinates must be finite and below this in absolute value (pixels). The
#: largest slides are ~50k pixels a side; beyond ~1e154 areas overflow to inf.
_MAX_COORDINATE = 2.0**31

# Bounds on an invalid geometry that :func:`shapely.make_valid` is asked to repair
# (valid geometries are never limited). Its time grows about linearly with the
# vertices, but about quadratically with the rings and with the self-intersections
# (pairs of crossing or touching non-adjacent edges): measured, ~0.8 s for 50k
# vertices and one crossing, ~0.5-0.8 s for 625 rings, ~0.3-0.9 s for 1000
# self-intersections, 1.6 s for 1200, and 215 s for a 250-vertex star with 30k.
_MAX_REPAIR_VERTICES = 50_000
_MAX_REPAIR_RINGS = 500
_MAX_REPAIR_CROSSINGS = 1000

#: Upper bound on the (edge, edge) pairs held at once while counting crossings.
_CROSSING_PAIRS_PER_STEP = 1 << 22


# -- geometry conversion -------------------------------------------------------------


def _ring_to_list(coords: NDArray[np.float64]) -> list[list[float]] | list[list[int]]:
    xy = coords[:, :2]
    if (
        xy.size
        and np.all(np.isfinite(xy))
        and np.all(xy == np.round(xy))
        and np.all(np.abs(xy) < 2**53)
    ):
        ints: list[list[int]] = xy.astype(np.int64).tolist()
        return ints
    floats: list[list[float]] = xy.tolist()
    return floats


def _polygon_coords(polygon: Polygon) -> list[Any]:
    rings = [polygon.exterior, *polygon.interiors]
    return [_ring_to_list(shapely.get_coordinates(ring)) for ring in rings]


def _geometry_to_geojson(geometry: PolygonalGeometry) -> dict[str, Any]:
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coords(geometry)}
    return {
        "type": "MultiPolygon",
        "coordinates": [_polygon_coords(p) for p in geometry.geoms],
    }


def _ring_array(ring: object, where: str) -> NDArray[np.float64] | None:
    """Check one GeoJSON ring and return it as an (N, 2) float array (None: degenerate)."""
    if not isinstance(ring, Sequence) or isinstance(ring, str | bytes):
        raise AnnotationError(f"{where}: a ring must be a list of [x, y] positions, got {ring!r}")
    if len(ring) == 0:
        return None
    try:
        arr = np.asarray(ring)
    except ValueError:
        raise AnnotationError(
            f"{where}: ring positions must all be [x, y] or [x, y, z] numbers"
        ) from None
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.dtype.kind not in "iuf":
        raise AnnotationError(
            f"{where}: ring positions must all be [x, y] or [x, y, z] numbers, got {_abbrev(ring)}"
        )
    xy = arr[:, :2].astype(np.float64)
    if not _in_range(xy):
        raise AnnotationError(f"{where}: {_coordinate_message(xy)}")
    if len(xy) < 3:
        return None  # fewer than 3 positions: no area, a degenerate sliver
    return xy


def _in_range(xy: NDArray[np.float64]) -> bool:
    """Whether all coordinates are finite and below ``_MAX_COORDINATE`` in absolute value."""
    return not xy.size or bool(np.abs(xy).max() < _MAX_COORDINATE)  # nan compares False


def _coordinate_message(xy: NDArray[np.float64]) -> str:
    bad = float(xy[~(np.abs(xy) < _MAX_COORDINATE)][0])
    return (
        f"coordinates must be finite and below 2**31 pixels in absolute value "
        f"(no slide is larger), got {bad!r}"
    )


def _check_coordinates(geometry: shapely.Geometry, where: str) -> None:
    """Raise if a shapely geometry has a coordinate that is not finite or out of range."""
    xy = shapely.get_coordinates(geometry)
    if not _in_range(xy):
        raise AnnotationError(f"{where}: {_coordinate_message(xy)}")


def _abbrev(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _polygon_from_rings(rings: object, where: str) -> Polygon:
    if not isinstance(rings, Sequence) or isinstance(rings, str | bytes):
        raise AnnotationError(
            f"{where}: Polygon coordinates must be a list of rings, got {_abbrev(rings)}"
        )
    arrays = [_ring_array(ring, where) for ring in rings]
    if not arrays or arrays[0] is None:
        return Polygon()
    holes = [a for a in arrays[1:] if a is not None]
    return Polygon(arrays[0], holes)


def _geometry_from_geojson(geometry: object, where: str) -> PolygonalGeometry:
    """Build a shapely geometry from a GeoJSON geometry or a geo-interface object."""
    if isinstance(geometry, Polygon | MultiPolygon):
        _check_coordinates(geometry, where)
        return geometry
    geometry = getattr(geometry, "__geo_interface__", geometry)
    if not isinstance(geometry, Mapping):
        raise AnnotationError(
            f"{where}: geometry must be a GeoJSON object, got {type(geometry).__name__}"
        )
    kind = geometry.get("type")
    if kind not in _ALLOWED_GEOMETRY_TYPES:
        raise AnnotationError(
            f"{where}: unsupported geometry type {kind!r}; expected 'Polygon' or 'MultiPolygon'"
        )
    if "coordinates" not in geometry:
        raise AnnotationError(f"{where}: {kind} geometry has no 'coordinates'")
    coordinates = geometry["coordinates"]
    if kind == "Polygon":
        return _polygon_from_rings(coordinates, where)
    if not isinstance(coordinates, Sequence) or isinstance(coordinates, str | bytes):
        raise AnnotationError(
            f"{where}: MultiPolygon coordinates must be a list of polygons, "
            f"got {_abbrev(coordinates)}"
        )
    parts = [_polygon_from_rings(rings, where) for rings in coordinates]
    return MultiPolygon([p for p in parts if not p.is_empty])


def _polygonal_parts(geometry: shapely.Geometry) -> PolygonalGeometry:
    """Keep only the polygonal parts of a geometry (e.g. the output of make_valid)."""
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if isinstance(g, Polygon | MultiPolygon)]
    polygons: list[Polygon] = []
    for part in parts:
        polygons.extend(part.geoms if isinstance(part, MultiPolygon) else [part])
    polygons = [p for p in polygons if not p.is_empty]
    if len(polygons) == 1:
        return polygons[0]
    return MultiPolygon(polygons)


def _count_crossings(geometry: PolygonalGeometry, limit: int) -> int:
    """Count pairs of non-adjacent edges that intersect, stopping once past ``limit``.

    Edges of all rings (shells and holes of every part) are compared, so a hole
    crossing its shell or two overlapping parts count too. An R-tree of the edges
    keeps the work near ``O(n log n + crossings)``; the edges are queried in
    growing steps: a tangle is found after a few small queries, and at most
    about ``_CROSSING_PAIRS_PER_STEP`` pairs are held at once.
    """
    rings = []
    for ring in shapely.get_rings(shapely.get_parts(geometry)):  # shells and holes
        xy = shapely.get_coordinates(ring)
        # Drop repeated points: a zero-length edge would touch its neighbours' neighbours.
        keep = np.ones(len(xy), dtype=np.bool_)
        keep[1:] = np.any(xy[1:] != xy[:-1], axis=1)
        xy = xy[keep]
        if len(xy) >= 3:
            rings.append(xy)
    if not rings:
        return 0
    sizes = np.array([len(xy) - 1 for xy in rings])  # edges per ring
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)  # index of each edge's ring's first edge
    last = first + np.repeat(sizes, sizes) - 1
    ends = np.concatenate([np.stack([xy[:-1], xy[1:]], axis=1) for xy in rings])
    edges = shapely.linestrings(ends)
    tree = shapely.STRtree(edges)
    max_step = max(64, _CROSSING_PAIRS_PER_STEP // len(edges))
    count, start, step = 0, 0, 8
    while start < len(edges) and count <= limit:
        i, j = tree.query(edges[start : start + step], predicate="intersects")
        i = i + start
        later = j > i  # each pair once, and not an edge with itself
        i, j = i[later], j[later]
        same_ring = first[i] == first[j]
        adjacent = same_ring & ((j == i + 1) | ((i == first[i]) & (j == last[i])))
        count += int(np.count_nonzero(~adjacent))
        start += step
        step = min(2 * step, max_step)
    return count


def _repair(geometry: PolygonalGeometry, where: str) -> PolygonalGeometry:
    """Repair an invalid geometry with make_valid, refusing one too complex to repair quickly."""
    vertices = int(shapely.get_num_coordinates(geometry))
    parts = shapely.get_parts(geometry)
    rings = len(parts) + int(np.sum(shapely.get_num_interior_rings(parts)))
    problem = ""
    if vertices > _MAX_REPAIR_VERTICES:
        problem = f"more vertices than the limit of {_MAX_REPAIR_VERTICES}"
    elif rings > _MAX_REPAIR_RINGS:
        problem = f"more rings than the limit of {_MAX_REPAIR_RINGS}"
    elif _count_crossings(geometry, _MAX_REPAIR_CROSSINGS) > _MAX_REPAIR_CROSSINGS:
        problem = f"more self-intersections than the limit of {_MAX_REPAIR_CROSSINGS}"
    if problem:
        raise AnnotationError(
            f"{where}: invalid geometry ({vertices} vertices, {rings} rings) too complex "
            f"to repair quickly: {problem}; simplify or fix it first"
        )
    return _polygonal_parts(shapely.make_valid(geometry))
