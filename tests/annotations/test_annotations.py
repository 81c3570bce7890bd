from __future__ import annotations

import csv
import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, MultiPolygon, Polygon, box, shape

from glomseg.annotations._annotations import (
    GLOMERULUS_COLOR,
    Annotation,
    AnnotationWarning,
    annotations_outside,
    as_polygonal,
    parse_annotations,
    read_annotations,
    write_annotations,
)
from glomseg.annotations._geometry import _count_crossings
from glomseg.errors import AnnotationError

DATA = Path(__file__).parents[1] / "data" / "slide_annotations"
SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]


def feature(coordinates: Any, kind: str = "Polygon", **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": {"type": kind, "coordinates": coordinates},
        "properties": properties,
    }


def glom(coordinates: Any = SQUARE, name: str = "glomerulus") -> dict[str, Any]:
    return feature(
        coordinates,
        classification={"name": name, "colorRGB": GLOMERULUS_COLOR},
        isLocked=True,
        measurements=[],
    )


# -- layouts ---------------------------------------------------------------------------


def test_bare_list_and_feature_collection_agree() -> None:
    features = [glom(), glom([[[20, 20], [30, 20], [30, 25], [20, 20]]], name="Cortex")]
    a = parse_annotations(features)
    b = parse_annotations({"type": "FeatureCollection", "features": features})
    assert a == b
    assert [x.classification for x in a] == ["glomerulus", "Cortex"]
    assert [x.geometry.area for x in a] == [100.0, 25.0]
    assert a[0].color == GLOMERULUS_COLOR
    assert a[0].properties == {"isLocked": True, "measurements": []}
    assert a[0].id == "PathAnnotationObject"


def test_polygon_with_hole_and_multipolygon() -> None:
    holed = [SQUARE[0], [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]
    multi = [SQUARE, [[[20, 0], [22, 0], [22, 2], [20, 2], [20, 0]]]]
    a, m = parse_annotations([feature(holed), feature(multi, "MultiPolygon")])
    assert isinstance(a.geometry, Polygon)
    assert len(a.geometry.interiors) == 1
    assert a.geometry.area == 96.0
    assert isinstance(m.geometry, MultiPolygon)
    assert m.geometry.area == 104.0


def test_int_and_float_coordinates() -> None:
    (a,) = parse_annotations([feature([[[0.5, 0], [10, 0.25], [10, 10], [0, 10]]])])
    assert a.geometry.exterior.coords[0] == (0.5, 0.0)
    # Unclosed rings are closed; 3-D positions keep (x, y).
    (b,) = parse_annotations([feature([[[0, 0, 7], [4, 0, 7], [4, 4, 7]]])])
    assert b.geometry.area == 8.0
    assert not b.geometry.has_z


def test_classes_filter() -> None:
    features = [glom(name="glomerulus"), glom(name="Cortex"), feature(SQUARE)]
    assert [a.classification for a in parse_annotations(features, classes="Cortex")] == ["Cortex"]
    kept = parse_annotations(features, classes={"glomerulus", "Cortex"})
    assert len(kept) == 2


def test_geo_interface_inputs() -> None:
    class Shape:
        __geo_interface__: ClassVar[dict[str, Any]] = {"type": "Polygon", "coordinates": SQUARE}

    items = [box(0, 0, 2, 2), Shape(), Annotation(box(0, 0, 3, 3), "Cortex", id=None)]
    parsed = parse_annotations(items)
    assert [a.geometry.area for a in parsed] == [4.0, 100.0, 9.0]
    assert parsed[2].classification == "Cortex"
    assert as_polygonal(Shape()).area == 100.0
    assert as_polygonal(glom()).area == 100.0
    assert parse_annotations(box(0, 0, 1, 2))[0].geometry.area == 2.0


def test_annotation_geo_interface_roundtrip() -> None:
    a = Annotation(box(0, 0, 4, 4), "glomerulus", color=-1, properties={"isLocked": False})
    assert parse_annotations([a.__geo_interface__]) == [a]
    assert shape(a.__geo_interface__["geometry"]).equals(a.geometry)


# -- repairs and reports ---------------------------------------------------------------


def test_invalid_ring_is_repaired_with_warning() -> None:
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    with pytest.warns(
        AnnotationWarning, match=r"a.json: feature 1 \(glomerulus\): invalid geometry"
    ):
        (good, fixed) = parse_annotations([glom(), glom(bowtie)], source="a.json")
    assert fixed.geometry.is_valid
    assert fixed.geometry.area == pytest.approx(50.0)
    assert good.geometry.area == 100.0


def test_sliver_is_dropped_with_warning() -> None:
    sliver = [[[0, 0], [100, 0], [100, 0.001], [0, 0]]]  # area 0.05
    with pytest.warns(AnnotationWarning, match=r"f.json: feature 0 .*area 0.05"):
        kept = parse_annotations([glom(sliver), glom()], source="f.json")
    assert len(kept) == 1
    # A lower threshold keeps it.
    assert len(parse_annotations([glom(sliver)], min_area=0.01)) == 1


@pytest.mark.parametrize(
    "coordinates",
    [
        [[[0, 0], [5, 5], [10, 10], [0, 0]]],  # collinear: zero area
        [[[0, 0], [1, 1]]],  # two positions
        [],  # no rings
        [[]],  # an empty ring
    ],
)
def test_degenerate_rings_are_slivers(coordinates: Any) -> None:
    with pytest.warns(AnnotationWarning, match="dropped a degenerate polygon"):
        assert parse_annotations([feature(coordinates)]) == []


def test_outside_slide_is_reported() -> None:
    inside, outside = glom(), glom([[[90, 90], [120, 90], [120, 95], [90, 90]]])
    with pytest.warns(AnnotationWarning, match=r"1 of 2 features reach outside .*indices 1"):
        kept = parse_annotations([inside, outside], slide_shape=(100, 100))
    assert len(kept) == 2
    assert annotations_outside(kept, (100, 100)) == [1]
    assert annotations_outside(kept, (200, 200)) == []


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("text", "expected a list of GeoJSON Features"),
        (42, "expected a list of GeoJSON Features"),
        ({"type": "Topology"}, "of type 'Topology'"),
        ({"type": "FeatureCollection", "features": {}}, "'features' must be a list"),
    ],
)
def test_non_list_documents(obj: object, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        parse_annotations(obj, source="doc.json")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (feature([1, 2], "Point"), "unsupported geometry type 'Point'"),
        (feature([[0, 0], [1, 1]], "LineString"), "unsupported geometry type 'LineString'"),
        ({"type": "Feature", "properties": {}}, "Feature has no geometry"),
        ({"type": "Feature", "geometry": {"type": "Polygon"}}, "has no 'coordinates'"),
        ("not a feature", "expected a GeoJSON Feature"),
        ({"type": "Banana"}, "got type 'Banana'"),
        (feature([[["a", "b"], [1, 2], [3, 4]]]), "must all be"),
        (feature([[[0, 0], [1, 1, 1, 1], [2, 0]]]), "must all be"),
        (feature([[[0, 0], [1], [2, 0], [0, 0]]]), "must all be"),
        (feature([[[0, 0], [1, None], [2, 0]]]), "must all be"),
        (feature([[[0, 0], [1, float("nan")], [2, 0]]]), "finite"),
        (feature([[0, 0], [1, 0], [1, 1]]), "must all be"),
        (feature("abc"), "list of rings"),
        (feature([SQUARE[0]], "MultiPolygon"), "must all be"),
        (feature(5, "MultiPolygon"), "list of polygons"),
        ({**glom(), "properties": []}, "'properties' must be a JSON object"),
        (feature(SQUARE, classification="glomerulus"), "'classification' must be a JSON object"),
        (feature(SQUARE, classification={"name": 3}), "name must be a string"),
        (feature(SQUARE, classification={"colorRGB": 2**33}), "colorRGB"),
    ],
)
def test_bad_features_name_file_and_index(item: object, message: str) -> None:
    with pytest.raises(AnnotationError, match=message) as info:
        parse_annotations([glom(), glom(), item], source="slide.json")
    assert str(info.value).startswith("slide.json: feature 2")


def test_annotation_checks_itself() -> None:
    with pytest.raises(AnnotationError, match="geometry must be a shapely Polygon"):
        Annotation(shapely.Point(0, 0))  # type: ignore[arg-type]
    with pytest.raises(AnnotationError, match="color"):
        Annotation(box(0, 0, 1, 1), color=True)
    with pytest.raises(AnnotationError, match="classification must be"):
        Annotation(box(0, 0, 1, 1), classification=3)  # type: ignore[arg-type]
    with pytest.raises(AnnotationError, match="must not hold 'classification'"):
        Annotation(box(0, 0, 1, 1), properties={"classification": {}})


@pytest.mark.parametrize(("value", "name"), [(-1, "min_area"), (float("nan"), "min_area")])
def test_bad_options(value: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse_annotations([glom()], min_area=value)
    with pytest.raises(ValueError, match="slide_shape"):
        parse_annotations([glom()], slide_shape=(0, 10))


def test_malformed_json_names_file_and_feature(tmp_path: Path) -> None:
    text = json.dumps([glom(), glom(), glom()], indent=2)
    # Only the third feature is broken.
    broken = (
        text[: text.rindex('"isLocked"')] + '"isLocked": tru,' + text[text.rindex("true") + 5 :]
    )
    path = tmp_path / "broken.json"
    path.write_text(broken)
    with pytest.raises(
        AnnotationError, match=r"broken.json: malformed JSON at line \d+ .*feature 2"
    ):
        read_annotations(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b"[\xff]")
    with pytest.raises(AnnotationError, match="not UTF-8"):
        read_annotations(path)


def test_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - FileNotFoundError is the point
        read_annotations(tmp_path / "nope.json")


# -- writing ---------------------------------------------------------------------------


def test_write_read_roundtrip(tmp_path: Path) -> None:
    holed = [SQUARE[0], [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]
    source = [
        glom(),
        glom(holed, name="Cortex"),
        feature([SQUARE, [[[20, 0], [22.5, 0], [22, 2], [20, 0]]]], "MultiPolygon"),
    ]
    annotations = parse_annotations(source)
    path = tmp_path / "out.json"
    write_annotations(path, annotations)
    raw = json.loads(path.read_text())
    assert isinstance(raw, list)
    assert len(raw) == 3
    # Same QuPath layout as the input, ints stay ints.
    assert raw[0] == glom()
    assert raw[2]["geometry"]["coordinates"][1][0][1] == [22.5, 0]
    assert read_annotations(path) == annotations
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

    write_annotations(path, annotations, feature_collection=True, indent=None)
    assert json.loads(path.read_text())["type"] == "FeatureCollection"
    assert read_annotations(path) == annotations


def test_write_bare_geometries_and_numpy_properties(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    a = Annotation(box(0, 0, 1, 1), properties={"score": np.float32(0.5), "v": np.arange(2)})
    write_annotations(path, [box(0, 0, 2, 2), a])
    first, second = json.loads(path.read_text())
    assert "id" not in first
    assert first["properties"] == {}
    assert second["properties"] == {"score": 0.5, "v": [0, 1]}


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.json"
    write_annotations(path, [box(0, 0, 2, 2)])
    before = path.read_bytes()
    bad = Annotation(box(0, 0, 1, 1), properties={"x": object()})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_annotations(path, [bad])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


# -- real data -------------------------------------------------------------------------


def _json_files() -> list[Path]:
    return sorted(DATA.glob("*.json"))


def test_all_real_files_are_present() -> None:
    assert len(_json_files()) == 20


@pytest.mark.parametrize("path", _json_files(), ids=lambda p: p.name[:18])
def test_real_file_parses_and_matches_shapely(path: Path) -> None:
    raw = json.loads(path.read_text())
    independent = [shape(f["geometry"]) for f in raw]
    annotations = read_annotations(path)
    assert len(annotations) == len(raw) == len(independent)
    assert sum(a.geometry.area for a in annotations) == pytest.approx(
        sum(g.area for g in independent), rel=1e-12
    )
    names = {f["properties"].get("classification", {}).get("name") for f in raw}
    assert {a.classification for a in annotations} == names
    # Writing and reading again changes nothing.
    assert parse_annotations(json.loads(json.dumps([a.to_feature() for a in annotations]))) == (
        annotations
    )


def test_real_slide_sizes_report_outside_polygons() -> None:
    with (DATA / "slide_sizes.csv").open(newline="") as handle:
        sizes = {
            row["image_file"].split(".")[0]: (int(row["height_pixels"]), int(row["width_pixels"]))
            for row in csv.DictReader(handle)
        }
    # c68fe75ea = VAN0010-LK-155-40: its recorded width (19780) is narrower than its polygons.
    path = DATA / "VAN0010-LK-155-40-AF_preIMS_registered_glomerulus_detections.json"
    with pytest.warns(AnnotationWarning, match="features reach outside the slide"):
        annotations = read_annotations(path, slide_shape=sizes["c68fe75ea"])
    assert annotations_outside(annotations, sizes["c68fe75ea"])
    # aaa6a05cc = VAN0003-LK-33-2 fits its slide: no report.
    fitted = read_annotations(
        DATA / "VAN0003-LK-33-2-PAS_FFPE_glom_annotations.json", slide_shape=sizes["aaa6a05cc"]
    )
    assert len(fitted) == 96


def test_null_geometry_feature_is_skipped_with_warning() -> None:
    # GeoJSON allows "geometry": null (an unlocated feature); QuPath writes some.
    unlocated = {"type": "Feature", "geometry": None, "properties": {"isLocked": False}}
    with pytest.warns(AnnotationWarning, match=r"slide\.json: feature 1.*no geometry"):
        kept = parse_annotations([glom(), unlocated, glom()], source="slide.json")
    assert len(kept) == 2


def test_qupath_rgb_list_colour_is_read_as_argb() -> None:
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
        "properties": {"classification": {"name": "glomerulus", "color": [208, 20, 207]}},
    }
    (annotation,) = parse_annotations([feature])
    # opaque ARGB 0xFFD014CF as a signed 32-bit int, the colorRGB of the HuBMAP files
    assert annotation.color == GLOMERULUS_COLOR == 0xFFD014CF - 2**32
    bad = {**feature, "properties": {"classification": {"name": "g", "color": [1, 2]}}}
    with pytest.raises(
        AnnotationError, match=r"feature 0: classification color must be \[r, g, b\]"
    ):
        parse_annotations([bad])


# -- bad input: huge coordinates, NaN, deep nesting, tangled polygons -----------------


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


_coordinate = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-(2.0**31), 2.0**31),
    st.sampled_from([2.0**31, -(2.0**31), 2.0**31 - 1, 1e155, -1e155, 1e308]),
    st.integers(-(2**31), 2**31),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_coordinate, min_size=4, max_size=4))
def test_coordinates_round_trip_or_are_refused(values: list[float]) -> None:
    x0, y0, x1, y1 = values
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    in_range = all(math.isfinite(v) and abs(v) < 2**31 for v in values)
    with tempfile.TemporaryDirectory() as tmp:
        source, copy = Path(tmp) / "in.json", Path(tmp) / "out.json"
        source.write_text(json.dumps([glom([ring])]))  # Python's json writes NaN/Infinity
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnnotationWarning)  # degenerate boxes are dropped
            if not in_range:
                with pytest.raises(AnnotationError, match=r"in\.json: feature 0: coordinates"):
                    read_annotations(source, min_area=0)
                return
            annotations = read_annotations(source, min_area=0)
            assert all(math.isfinite(a.geometry.area) for a in annotations)
            write_annotations(copy, annotations)
            _strict_json(copy.read_text())
            assert read_annotations(copy, min_area=0) == annotations


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e155, 2.0**31])
def test_write_refuses_bad_geometry_before_writing(tmp_path: Path, value: float) -> None:
    path = tmp_path / "keep.json"
    write_annotations(path, [box(0, 0, 2, 2)])
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # shapely warns about NaN itself
        bad = Polygon([(0, 0), (value, 0), (value, 1), (0, 1)])
    for item in (Annotation(bad), bad):
        with pytest.raises(AnnotationError, match=r"keep\.json: feature 1: .*coordinates"):
            write_annotations(path, [box(0, 0, 1, 1), item])
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


@pytest.mark.parametrize("value", [math.nan, math.inf, np.float64(-np.inf)])
def test_write_refuses_nan_properties(tmp_path: Path, value: float) -> None:
    path = tmp_path / "keep.json"
    write_annotations(path, [box(0, 0, 2, 2)])
    before = path.read_bytes()
    bad = Annotation(box(0, 0, 1, 1), properties={"measurements": {"Area": value}})
    with pytest.raises(AnnotationError, match=r"keep\.json: feature 2: .*strict JSON"):
        write_annotations(path, [box(0, 0, 1, 1), box(0, 0, 3, 3), bad])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_huge_coordinates_in_memory_are_refused() -> None:
    huge = [[[0, 0], [1e155, 0], [1e155, 1e155], [0, 0]]]
    with pytest.raises(AnnotationError, match=r"mem: feature 1: coordinates .*1e\+155"):
        parse_annotations([glom(), glom(huge)], source="mem")
    with pytest.raises(AnnotationError, match=r"feature 0: coordinates"):
        parse_annotations([Annotation(box(0, 0, 1e155, 1))], source="mem")
    with pytest.raises(AnnotationError, match="coordinates"):
        as_polygonal(box(0, 0, math.inf, 1))


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_deeply_nested_json_names_file(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * depth + "]" * depth)
    with pytest.raises(AnnotationError, match=r"deep\.json: JSON nested too deeply"):
        read_annotations(path)


def test_deep_but_parseable_properties_round_trip(tmp_path: Path) -> None:
    nested: Any = 1
    for _ in range(500):
        nested = [nested]
    path = tmp_path / "deep.json"
    path.write_text(json.dumps([glom() | {"properties": {"m": nested}}]))
    annotations = read_annotations(path)
    write_annotations(path, annotations)
    assert read_annotations(path) == annotations


def star(n: int, step: int) -> Polygon:
    """The star polygon {n/step}: n vertices, n * (step - 1) self-crossings."""
    angles = 2 * np.pi * (np.arange(n) * step % n) / n
    return Polygon(np.column_stack([np.cos(angles), np.sin(angles)]) * 1000 + 2000)


def test_tangled_polygon_is_refused_quickly(tmp_path: Path) -> None:
    # {251/37}: 9036 crossings. make_valid would take minutes.
    path = tmp_path / "tangle.json"
    write_annotations(path, [box(0, 0, 5, 5), Annotation(star(251, 37), "glomerulus")])
    start = time.perf_counter()
    with pytest.raises(
        AnnotationError,
        match=r"tangle\.json: feature 1 \(glomerulus\): invalid geometry \(252 vertices, 1 rings\)"
        r" too complex .*self-intersections than the limit of 1000",
    ):
        read_annotations(path)
    with pytest.raises(AnnotationError, match="limit of 1000"):
        as_polygonal(star(251, 37))
    assert time.perf_counter() - start < 5


def test_few_crossings_are_still_repaired() -> None:
    with pytest.warns(AnnotationWarning, match="repaired"):
        (repaired,) = parse_annotations([star(101, 6)])  # 505 crossings
    assert repaired.geometry.is_valid
    assert repaired.geometry.area > 0


def test_repair_limits_on_vertices_and_rings() -> None:
    # One bow-tie in a ring of 60k vertices.
    angles = np.linspace(0, 2 * np.pi, 60_000, endpoint=False)
    ring = np.column_stack([np.cos(angles), np.sin(angles)]) * 10_000
    ring[[0, 1]] = ring[[1, 0]]
    with pytest.raises(AnnotationError, match=r"60001 vertices.*vertices than the limit of 50000"):
        as_polygonal(Polygon(ring))
    # 600 nested squares: no crossings, but quadratic to repair.
    nested = MultiPolygon([box(-i, -i, i, i) for i in range(1, 601)])
    with pytest.raises(AnnotationError, match=r"600 rings.*rings than the limit of 500"):
        as_polygonal(nested)


def test_valid_polygons_are_never_limited() -> None:
    angles = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    circle = np.column_stack([np.cos(angles), np.sin(angles)]) * 10_000
    (annotation,) = parse_annotations([Polygon(circle)])
    assert shapely.get_num_coordinates(annotation.geometry) == 200_001


def _naive_crossings(geometry: Polygon | MultiPolygon) -> int:
    edges = []  # (ring, index, edge count, segment)
    for r, ring in enumerate(shapely.get_rings(shapely.get_parts(geometry))):
        xy = shapely.get_coordinates(ring)
        xy = xy[np.r_[True, np.any(xy[1:] != xy[:-1], axis=1)]]
        if len(xy) < 3:
            continue
        edges += [(r, k, len(xy) - 1, LineString(xy[k : k + 2])) for k in range(len(xy) - 1)]
    count = 0
    for a, (ra, ka, na, sa) in enumerate(edges):
        for rb, kb, _, sb in edges[a + 1 :]:
            adjacent = ra == rb and (kb == ka + 1 or (ka == 0 and kb == na - 1))
            count += not adjacent and sa.intersects(sb)
    return count


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=3, max_size=9),
        min_size=1,
        max_size=3,
    )
)
def test_crossing_count_matches_brute_force(rings: list[list[tuple[int, int]]]) -> None:
    geometry = MultiPolygon([Polygon(ring) for ring in rings])
    assert _count_crossings(geometry, 10**6) == _naive_crossings(geometry)
