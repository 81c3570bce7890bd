"""Read and write HuBMAP / QuPath annotation JSON.

QuPath exports annotations as GeoJSON: either a bare JSON list of ``Feature``
objects (the HuBMAP files) or a ``FeatureCollection``. Each feature holds a
``Polygon`` or ``MultiPolygon`` in full-resolution pixel coordinates, with
GeoJSON's ``(x, y) = (col, row)`` order, and a ``properties.classification``
``{"name": ..., "colorRGB": ...}`` (``colorRGB`` is a signed 32-bit ARGB int; the
``"color": [r, g, b]`` of QuPath 0.3 and newer is read as the same opaque colour).

Geometries stay in GeoJSON ``(x, y)`` space here; the swap to ``(row, col)``
happens only in :class:`glomseg.MaskRasterizer`, where polygons meet pixels.

Reading is forgiving about what real files contain and strict about what they
cannot mean:

* invalid rings (self-intersections, bow-ties) are repaired with
  :func:`shapely.make_valid`, with an :class:`AnnotationWarning` naming the
  feature; an invalid geometry too complex to repair quickly (more than
  50 000 vertices, 500 rings or 1000 self-intersections, where
  :func:`shapely.make_valid` would take seconds to hours) raises
  :class:`glomseg.errors.AnnotationError` instead. Valid polygons are never limited;
* features with ``"geometry": null`` (GeoJSON's unlocated features) are
  skipped with an :class:`AnnotationWarning`;
* degenerate slivers, polygons whose area is below ``min_area`` (default
  :data:`DEFAULT_MIN_AREA`, one square pixel), are dropped with an
  :class:`AnnotationWarning`;
* polygons reaching outside a slide of known ``slide_shape`` are reported with
  an :class:`AnnotationWarning` (and kept);
* anything that is not GeoJSON polygons (malformed or too deeply nested JSON,
  a wrong geometry type, non-numeric coordinates, coordinates that are not
  finite or not below ``_MAX_COORDINATE`` = 2**31 pixels in absolute value, far
  beyond any slide) raises :class:`glomseg.errors.AnnotationError` naming the file and
  the feature index.

Writing refuses what it could not write back as strict JSON (non-finite or
out-of-range coordinates, NaN or infinite property values) before it writes
anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from glomseg.annotations._geometry import (
    _ALLOWED_GEOMETRY_TYPES,
    PolygonalGeometry,
    _abbrev,
    _check_coordinates,
    _geometry_from_geojson,
    _geometry_to_geojson,
    _repair,
)
from glomseg.errors import AnnotationError, AnnotationWarning
from glomseg.io._files import atomic_path

__all__ = [
    "DEFAULT_MIN_AREA",
    "GLOMERULUS_COLOR",
    "Annotation",
    "AnnotationWarning",
    "PolygonalGeometry",
    "annotations_outside",
    "as_polygonal",
    "clip_to_slide",
    "parse_annotations",
    "read_annotations",
    "write_annotations",
]

logger = logging.getLogger(__name__)

DEFAULT_MIN_AREA: float = 1.0
"""Default ``min_area`` (square full-resolution pixels) below which a polygon is a sliver.

A polygon smaller than one pixel cannot reliably cover a pixel centre, so it
carries no mask information. A glomerulus at full resolution is ~10^4 to 10^5
square pixels.
"""

GLOMERULUS_COLOR: int = -3140401
"""The ``colorRGB`` (signed 32-bit ARGB) the HuBMAP files give the "glomerulus" class."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class Annotation:
    """One annotated region: a polygon, its class and its QuPath metadata.

    Parameters
    ----------
    geometry : shapely.Polygon or shapely.MultiPolygon
        The region in full-resolution slide pixels, GeoJSON ``(x, y) = (col, row)``.
    classification : str or None
        The class name, e.g. ``"glomerulus"`` or ``"Cortex"``; ``None`` if unclassified.
    color : int or None
        QuPath's ``colorRGB``: a signed 32-bit ARGB integer; ``None`` if absent.
    properties : mapping
        Every other entry of the feature's ``properties`` (``isLocked``,
        ``measurements``, ...), kept as read so that writing round-trips.
    id : str, int or None
        The feature's ``id``. QuPath uses the object type
        (``"PathAnnotationObject"``, ``"PathDetectionObject"``), so it is not unique.

    Raises
    ------
    AnnotationError
        If ``geometry`` is not a Polygon or MultiPolygon, or ``color`` is not a
        32-bit integer.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> a = Annotation(box(0, 0, 4, 2), classification="glomerulus")
    >>> a.geometry.area, a.classification, a.id
    (8.0, 'glomerulus', 'PathAnnotationObject')
    >>> a.to_feature()["properties"]
    {'classification': {'name': 'glomerulus'}}
    >>> Annotation(box(0, 0, 1, 1), color=2**40)
    Traceback (most recent call last):
    ...
    glomseg.errors.AnnotationError: color must be a signed 32-bit integer, got 1099511627776
    """

    geometry: PolygonalGeometry
    classification: str | None = None
    color: int | None = None
    properties: Mapping[str, Any] = field(default_factory=dict, hash=False)
    id: str | int | None = "PathAnnotationObject"

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Polygon | MultiPolygon):
            raise AnnotationError(
                f"geometry must be a shapely Polygon or MultiPolygon, "
                f"got {type(self.geometry).__name__}"
            )
        if self.classification is not None and not isinstance(self.classification, str):
            raise AnnotationError(
                f"classification must be a str or None, got {self.classification!r}"
            )
        if self.color is not None and (
            isinstance(self.color, bool)
            or not isinstance(self.color, int)
            or not _INT32_MIN <= self.color <= _INT32_MAX
        ):
            raise AnnotationError(f"color must be a signed 32-bit integer, got {self.color!r}")
        if not isinstance(self.properties, Mapping):
            raise AnnotationError(f"properties must be a mapping, got {self.properties!r}")
        if "classification" in self.properties:
            raise AnnotationError(
                "properties must not hold 'classification'; use the classification and color fields"
            )

    @property
    def __geo_interface__(self) -> dict[str, Any]:
        """The annotation as a GeoJSON Feature (the geo interface protocol)."""
        return self.to_feature()

    def to_feature(self) -> dict[str, Any]:
        """Return the annotation as a QuPath-compatible GeoJSON Feature dict.

        Integral coordinates are written as ints, as QuPath and the HuBMAP files do.

        Examples
        --------
        >>> from shapely.geometry import box
        >>> f = Annotation(box(0, 0, 2, 1), "glomerulus", color=-3140401).to_feature()
        >>> f["geometry"]["coordinates"]
        [[[2, 0], [2, 1], [0, 1], [0, 0], [2, 0]]]
        >>> f["properties"]["classification"]
        {'name': 'glomerulus', 'colorRGB': -3140401}
        """
        properties: dict[str, Any] = {}
        if self.classification is not None or self.color is not None:
            cls: dict[str, Any] = {}
            if self.classification is not None:
                cls["name"] = self.classification
            if self.color is not None:
                cls["colorRGB"] = self.color
            properties["classification"] = cls
        properties.update(self.properties)
        feature: dict[str, Any] = {"type": "Feature"}
        if self.id is not None:
            feature["id"] = self.id
        feature["geometry"] = _geometry_to_geojson(self.geometry)
        feature["properties"] = properties
        return feature


def as_polygonal(geometry: object) -> PolygonalGeometry:
    """Convert a polygon-like object to a valid shapely Polygon or MultiPolygon.

    Accepts a shapely geometry, a GeoJSON geometry or Feature dict, an
    :class:`Annotation`, or anything with ``__geo_interface__``. Invalid
    geometries are repaired with :func:`shapely.make_valid` (silently: use
    :func:`parse_annotations` for warnings that name the feature).

    Parameters
    ----------
    geometry : object
        The geometry.

    Returns
    -------
    shapely.Polygon or shapely.MultiPolygon

    Raises
    ------
    AnnotationError
        If the object is not a Polygon or MultiPolygon, its coordinates are
        malformed, not finite or not below 2**31 in absolute value, or it is
        invalid and too complex to repair quickly (more than 50 000 vertices,
        500 rings or 1000 self-intersections; see :func:`parse_annotations`).

    Examples
    --------
    >>> as_polygonal({"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 0]]]}).area
    2.0
    >>> as_polygonal({"type": "Point", "coordinates": [0, 0]})
    Traceback (most recent call last):
    ...
    glomseg.errors.AnnotationError: geometry: unsupported geometry type 'Point'; ...
    """
    if isinstance(geometry, Annotation):
        return geometry.geometry
    interface = getattr(geometry, "__geo_interface__", geometry)
    if isinstance(interface, Mapping) and interface.get("type") == "Feature":
        geometry = interface.get("geometry")
    result = _geometry_from_geojson(geometry, "geometry")
    if not result.is_valid:
        result = _repair(result, "geometry")
    return result


# -- parsing --------------------------------------------------------------------------


def _features_of(obj: object, source: str) -> list[object]:
    obj = getattr(obj, "__geo_interface__", obj)
    if isinstance(obj, Mapping):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            features = obj.get("features")
            if not isinstance(features, list):
                raise AnnotationError(
                    f"{source}: FeatureCollection 'features' must be a list, "
                    f"got {type(features).__name__}"
                )
            return features
        if kind == "Feature" or kind in _ALLOWED_GEOMETRY_TYPES:
            return [obj]
        raise AnnotationError(
            f"{source}: expected a list of GeoJSON Features or a FeatureCollection, "
            f"got a JSON object of type {kind!r}"
        )
    if isinstance(obj, list | tuple):
        return list(obj)
    raise AnnotationError(
        f"{source}: expected a list of GeoJSON Features or a FeatureCollection, "
        f"got {type(obj).__name__}"
    )


def _split_properties(
    properties: object, where: str
) -> tuple[str | None, int | None, dict[str, Any]]:
    if properties is None:
        return None, None, {}
    if not isinstance(properties, Mapping):
        raise AnnotationError(
            f"{where}: 'properties' must be a JSON object, got {type(properties).__name__}"
        )
    rest = {k: v for k, v in properties.items() if k != "classification"}
    cls = properties.get("classification")
    if cls is None:
        return None, None, rest
    if not isinstance(cls, Mapping):
        raise AnnotationError(
            f"{where}: 'classification' must be a JSON object with 'name' and 'colorRGB', "
            f"got {_abbrev(cls)}"
        )
    name = cls.get("name")
    if name is not None and not isinstance(name, str):
        raise AnnotationError(f"{where}: classification name must be a string, got {name!r}")
    color = cls.get("colorRGB")
    rgb = cls.get("color")
    if color is None and rgb is not None:
        # QuPath 0.3 and newer write "color": [r, g, b] instead of "colorRGB".
        if (
            not isinstance(rgb, list)
            or len(rgb) != 3
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb
            )
        ):
            raise AnnotationError(
                f"{where}: classification color must be [r, g, b] with values 0-255, got {rgb!r}"
            )
        argb = (0xFF << 24) | (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
        color = argb - 2**32 if argb > _INT32_MAX else argb
    if color is not None and (
        isinstance(color, bool)
        or not isinstance(color, int)
        or not _INT32_MIN <= color <= _INT32_MAX
    ):
        raise AnnotationError(
            f"{where}: classification colorRGB must be a signed 32-bit integer, got {color!r}"
        )
    return name, color, rest


def _outside_slide(geometry: PolygonalGeometry, slide_shape: tuple[int, int]) -> bool:
    minx, miny, maxx, maxy = geometry.bounds
    height, width = slide_shape
    return bool(minx < 0 or miny < 0 or maxx > width or maxy > height)


def clip_to_slide(
    annotations: Iterable[Annotation], slide_shape: tuple[int, int]
) -> list[Annotation]:
    """The annotations cut to the pixels of a slide of ``slide_shape``; those beyond it dropped.

    Pixel ``(row, col)`` has its centre at GeoJSON ``(x, y) = (col, row)`` (the
    rule of :class:`~glomseg.annotations.MaskRasterizer`), so the slide's pixel
    centres span ``-0.5 <= x <= width - 0.5`` and likewise in ``y``: each
    annotation is cut to that rectangle, and one that reaches past it no
    longer marks a pixel outside the slide (a padded tile's fill). Annotations
    within it are returned as they are.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> inside, across, beyond = (Annotation(box(*b)) for b in
    ...     [(0, 0, 10, 10), (5, 5, 30, 12), (40, 40, 50, 50)])
    >>> [a.geometry.bounds for a in clip_to_slide([inside, across, beyond], (20, 20))]
    [(0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 19.5, 12.0)]
    """
    height, width = _check_slide_shape(slide_shape)
    limits = (-0.5, -0.5, width - 0.5, height - 0.5)
    frame = shapely.box(*limits)
    kept = []
    for annotation in annotations:
        minx, miny, maxx, maxy = annotation.geometry.bounds
        if minx >= limits[0] and miny >= limits[1] and maxx <= limits[2] and maxy <= limits[3]:
            kept.append(annotation)
            continue
        cut = annotation.geometry.intersection(frame)
        parts = [g for g in getattr(cut, "geoms", [cut]) if isinstance(g, Polygon | MultiPolygon)]
        parts = [part for part in parts if not part.is_empty]
        if not parts:
            continue  # wholly outside, or touching it along an edge
        area = shapely.union_all(parts)
        geometry = area if isinstance(area, Polygon | MultiPolygon) else MultiPolygon(parts)
        kept.append(dataclasses.replace(annotation, geometry=geometry))
    return kept


def _check_slide_shape(slide_shape: object) -> tuple[int, int]:
    if (
        not isinstance(slide_shape, Sequence)
        or len(slide_shape) < 2
        or not all(isinstance(v, int | np.integer) and v > 0 for v in slide_shape[:2])
    ):
        raise ValueError(
            f"slide_shape must be (height, width) with positive integers, got {slide_shape!r}"
        )
    return int(slide_shape[0]), int(slide_shape[1])


def parse_annotations(
    obj: object,
    *,
    source: str = "<memory>",
    min_area: float = DEFAULT_MIN_AREA,
    slide_shape: tuple[int, int] | None = None,
    classes: Collection[str] | None = None,
) -> list[Annotation]:
    """Parse decoded annotation JSON (or geo-interface objects) into annotations.

    Parameters
    ----------
    obj : object
        A list of GeoJSON Features (the HuBMAP/QuPath layout), a
        ``FeatureCollection``, a single Feature or geometry, or anything with
        ``__geo_interface__``. List items may also be bare Polygon/MultiPolygon
        geometries, shapely geometries or :class:`Annotation` objects.
    source : str
        Name used in errors and warnings, e.g. the file path.
    min_area : float
        Polygons with an area below this (square full-resolution pixels, after
        repair) are degenerate slivers: dropped with an :class:`AnnotationWarning`.
        Default :data:`DEFAULT_MIN_AREA` (1.0). Use 0 to keep all non-empty polygons.
    slide_shape : (height, width), optional
        The slide size in pixels. When given, features that reach outside
        ``[0, width] x [0, height]`` are reported with one :class:`AnnotationWarning`
        (and kept: a rasterizer clips them to its windows).
    classes : collection of str, optional
        Keep only features with one of these classification names
        (``"glomerulus"``, ``"Cortex"``, ...). Default: keep all.

    Returns
    -------
    list of Annotation
        In file order, without the dropped slivers.

    Raises
    ------
    AnnotationError
        If the structure is not GeoJSON polygons, a coordinate is not finite or
        not below 2**31 pixels in absolute value, or an invalid geometry is too
        tangled to repair (see Notes); the message names ``source`` and the
        feature index.

    Warns
    -----
    AnnotationWarning
        For each repaired invalid geometry, each dropped sliver and each skipped
        ``"geometry": null`` feature (naming the feature), and once for features
        outside ``slide_shape``.

    Notes
    -----
    Repair is bounded. :func:`shapely.make_valid` takes time about linear in
    the vertices but about quadratic in the rings and in the self-intersections
    (~0.3-0.9 s at 1000 of them, 215 s for a 250-vertex star polygon with 30k).
    An invalid geometry with more than 50 000 vertices, 500 rings (shells and
    holes) or 1000 self-intersections (pairs of intersecting non-adjacent edges)
    is therefore refused with an :class:`AnnotationError` that gives its vertex
    and ring counts and the limit it exceeds. Only invalid geometries are
    checked (counting crossings costs milliseconds for a few thousand vertices):
    valid polygons are accepted whatever their size.

    Examples
    --------
    >>> features = [
    ...     {"type": "Feature", "id": "PathAnnotationObject",
    ...      "geometry": {"type": "Polygon",
    ...                   "coordinates": [[[0, 0], [10, 0], [10, 5], [0, 5], [0, 0]]]},
    ...      "properties": {"classification": {"name": "glomerulus", "colorRGB": -3140401},
    ...                     "isLocked": False}},
    ...     {"type": "Feature",
    ...      "geometry": {"type": "Polygon", "coordinates": [[[0.5, 0], [3, 0], [3, 2.5]]]},
    ...      "properties": {"classification": {"name": "Cortex"}}},
    ... ]
    >>> [(a.classification, a.geometry.area) for a in parse_annotations(features)]
    [('glomerulus', 50.0), ('Cortex', 3.125)]
    >>> parse_annotations(features, classes={"Cortex"})[0].id is None
    True
    >>> parse_annotations({"type": "Point", "coordinates": [1, 2]})
    Traceback (most recent call last):
    ...
    glomseg.errors.AnnotationError: <memory>: expected a list of GeoJSON Features ...
    """
    if not (isinstance(min_area, int | float) and math.isfinite(min_area) and min_area >= 0):
        raise ValueError(f"min_area must be a finite number >= 0, got {min_area!r}")
    shape = None if slide_shape is None else _check_slide_shape(slide_shape)
    wanted: frozenset[str] | None = None
    if classes is not None:
        wanted = frozenset([classes] if isinstance(classes, str) else classes)

    annotations: list[Annotation] = []
    outside: list[int] = []
    for index, item in enumerate(_features_of(obj, source)):
        where = f"{source}: feature {index}"
        annotation = _parse_feature(item, where, min_area)
        if annotation is None:
            continue
        if wanted is not None and annotation.classification not in wanted:
            continue
        if shape is not None and _outside_slide(annotation.geometry, shape):
            outside.append(index)
        annotations.append(annotation)

    if outside:
        listed = ", ".join(str(i) for i in outside[:10]) + (", ..." if len(outside) > 10 else "")
        message = (
            f"{source}: {len(outside)} of {len(annotations)} features reach outside the slide "
            f"of shape {shape} (height, width): feature indices {listed}"
        )
        logger.warning(message)
        warnings.warn(message, AnnotationWarning, stacklevel=2)
    logger.debug("%s: parsed %d annotations", source, len(annotations))
    return annotations


def _parse_feature(item: object, where: str, min_area: float) -> Annotation | None:
    if isinstance(item, Annotation):
        geometry: object = item.geometry
        name, color, rest, ident = item.classification, item.color, dict(item.properties), item.id
    else:
        if isinstance(item, shapely.Geometry):
            item = item.__geo_interface__
        item = getattr(item, "__geo_interface__", item)
        if not isinstance(item, Mapping):
            raise AnnotationError(
                f"{where}: expected a GeoJSON Feature (a JSON object), got {type(item).__name__}"
            )
        kind = item.get("type")
        if kind == "Feature":
            if "geometry" in item and item["geometry"] is None:
                # GeoJSON's unlocated feature ("geometry": null): QuPath writes some.
                message = f"{where}: skipped a Feature with no geometry (null)"
                logger.warning(message)
                warnings.warn(message, AnnotationWarning, stacklevel=4)
                return None
            if item.get("geometry") is None:
                raise AnnotationError(f"{where}: Feature has no geometry")
            geometry = item["geometry"]
            name, color, rest = _split_properties(item.get("properties"), where)
            ident = item.get("id")
        elif kind in _ALLOWED_GEOMETRY_TYPES:
            geometry, name, color, rest, ident = item, None, None, {}, None
        else:
            raise AnnotationError(
                f"{where}: expected a GeoJSON Feature, Polygon or MultiPolygon, got type {kind!r}"
            )
    label = f"{where} ({name})" if name else where

    shape = _geometry_from_geojson(geometry, where)
    repaired = ""
    if not shape.is_empty and not shape.is_valid:
        repaired = shapely.is_valid_reason(shape)
        shape = _repair(shape, label)
    area = shape.area
    if shape.is_empty or area < min_area or area == 0:
        note = f", invalid: {repaired}" if repaired else ""
        message = (
            f"{label}: dropped a degenerate polygon of area {area:g} "
            f"(< min_area={min_area:g}{note})"
        )
        logger.warning(message)
        warnings.warn(message, AnnotationWarning, stacklevel=4)
        return None
    if repaired:
        message = f"{label}: invalid geometry ({repaired}) repaired with make_valid"
        logger.warning(message)
        warnings.warn(message, AnnotationWarning, stacklevel=4)
    if isinstance(ident, bool) or not isinstance(ident, str | int | type(None)):
        ident = str(ident)
    return Annotation(shape, classification=name, color=color, properties=rest, id=ident)


def annotations_outside(
    annotations: Iterable[Annotation | PolygonalGeometry], slide_shape: tuple[int, int]
) -> list[int]:
    """Indices of the annotations that reach outside a slide of ``slide_shape``.

    The slide covers ``0 <= x <= width`` and ``0 <= y <= height`` in GeoJSON
    pixel coordinates.

    Parameters
    ----------
    annotations : iterable of Annotation or shapely geometry
        The annotations.
    slide_shape : (height, width)
        The slide size in pixels.

    Returns
    -------
    list of int

    Examples
    --------
    >>> from shapely.geometry import box
    >>> annotations_outside([box(0, 0, 10, 10), box(5, 5, 30, 12)], (20, 20))
    [1]
    """
    shape = _check_slide_shape(slide_shape)
    result = []
    for index, a in enumerate(annotations):
        geometry = a.geometry if isinstance(a, Annotation) else a
        if _outside_slide(geometry, shape):
            result.append(index)
    return result


# -- files ----------------------------------------------------------------------------


def read_annotations(
    path: str | os.PathLike[str],
    *,
    min_area: float = DEFAULT_MIN_AREA,
    slide_shape: tuple[int, int] | None = None,
    classes: Collection[str] | None = None,
) -> list[Annotation]:
    """Read a HuBMAP/QuPath annotation JSON file.

    Parameters
    ----------
    path : str or path-like
        The ``.json`` file: a bare list of Features or a FeatureCollection.
    min_area, slide_shape, classes
        As in :func:`parse_annotations`.

    Returns
    -------
    list of Annotation

    Raises
    ------
    AnnotationError
        If the file is not UTF-8 JSON (the message gives the line, column and
        the feature near the error), is nested too deeply to parse, or is not
        GeoJSON polygons as :func:`parse_annotations` requires; the message
        names the file.
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> feature = {"type": "Feature", "geometry": {"type": "Polygon",
    ...            "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}}
    >>> _ = (d / "a.json").write_text(json.dumps([feature]))
    >>> read_annotations(d / "a.json")[0].geometry.bounds
    (0.0, 0.0, 4.0, 4.0)
    >>> _ = (d / "bad.json").write_text('[{"type": "Feature", ')
    >>> read_annotations(d / "bad.json")
    Traceback (most recent call last):
    ...
    glomseg.errors.AnnotationError: .../bad.json: malformed JSON at line 1 column 22 (near...
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        near = text.count('"Feature"', 0, exc.pos) - 1
        hint = f" (near feature {near})" if near >= 0 else ""
        raise AnnotationError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}{hint}: {exc.msg}"
        ) from None
    except RecursionError:
        raise AnnotationError(
            f"{path}: JSON nested too deeply to parse (GeoJSON polygons need about 8 levels)"
        ) from None
    try:
        return parse_annotations(
            obj, source=str(path), min_area=min_area, slide_shape=slide_shape, classes=classes
        )
    except RecursionError:
        # Deep nesting that json accepted but that is too deep to walk (e.g. in repr).
        raise AnnotationError(f"{path}: JSON nested too deeply to read") from None


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def write_annotations(
    path: str | os.PathLike[str],
    annotations: Iterable[Annotation | PolygonalGeometry],
    *,
    feature_collection: bool = False,
    indent: int | None = 2,
) -> None:
    """Write annotations as QuPath-compatible GeoJSON, atomically.

    The file is a bare JSON list of Features, like the HuBMAP files and QuPath's
    export (or a ``FeatureCollection`` with ``feature_collection=True``); both
    QuPath and :func:`read_annotations` open it. The data goes to a temporary file
    in the same folder, which then replaces ``path`` in one step, so readers never
    see a half-written file and a failure leaves any old file intact.

    Parameters
    ----------
    path : str or path-like
        Destination ``.json`` file.
    annotations : iterable of Annotation or shapely geometry
        Bare geometries are written without classification.
    feature_collection : bool
        Wrap the features in a ``FeatureCollection`` object.
    indent : int or None
        JSON indentation; ``None`` for the most compact file.

    Raises
    ------
    AnnotationError
        If a geometry has a coordinate that is not finite or not below 2**31
        in absolute value, a property value is NaN or infinite (strict JSON has
        neither), or the properties are nested too deeply to write; the message
        names the file and the feature. Nothing is written then.
    TypeError
        If a property value is not JSON serializable.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely.geometry import box
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.json"
    >>> write_annotations(p, [Annotation(box(1, 2, 3, 4), "glomerulus")])
    >>> [a.geometry.bounds for a in read_annotations(p)]
    [(1.0, 2.0, 3.0, 4.0)]
    """
    path = Path(path)
    features = []
    for index, item in enumerate(annotations):
        where = f"{path}: feature {index}"
        if isinstance(item, Annotation):
            _check_coordinates(item.geometry, where)
            annotation = item
        else:
            try:
                annotation = Annotation(as_polygonal(item), id=None)
            except AnnotationError as exc:
                raise AnnotationError(f"{path}: feature {index}: {exc}") from None
        features.append(annotation.to_feature())
    document: object = (
        {"type": "FeatureCollection", "features": features} if feature_collection else features
    )
    # Serialize before opening the file: a refusal leaves nothing behind.
    text = _dumps(document, indent, path, features)
    with atomic_path(path, clean=True) as tmp, tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.write("\n")
    logger.debug("wrote %d annotations to %s", len(features), path)


def _dumps(document: object, indent: int | None, path: Path, features: list[Any]) -> str:
    """Serialize ``document`` as strict JSON, naming the feature that cannot be."""
    try:
        return json.dumps(document, indent=indent, default=_json_default, allow_nan=False)
    except RecursionError:
        problem = "properties nested too deeply to write"
    except ValueError as exc:  # NaN or infinity (allow_nan=False), or a circular reference
        problem = (
            f"properties cannot be written as strict JSON ({exc}; JSON has no NaN or Infinity)"
        )
    for index, feature in enumerate(features):
        try:
            json.dumps(feature, default=_json_default, allow_nan=False)
        except (ValueError, RecursionError):
            raise AnnotationError(f"{path}: feature {index}: {problem}") from None
    raise AnnotationError(f"{path}: {problem}")  # pragma: no cover - the whole failed, no part
