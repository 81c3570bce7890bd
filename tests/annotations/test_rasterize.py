from __future__ import annotations

import csv
import math
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box
from skimage.draw import polygon as sk_polygon

from glomseg.annotations._annotations import Annotation, read_annotations, write_annotations
from glomseg.annotations._rasterize import (
    BOUNDARY_TOLERANCE,
    MaskRasterizer,
    mask_to_annotations,
    mask_to_polygons,
)
from glomseg.errors import AnnotationError
from glomseg.io._window import Window

DATA = Path(__file__).parents[1] / "data" / "slide_annotations"


def skimage_mask(polygons: list[Polygon], window: Window, downsample: int = 1) -> np.ndarray:
    """Independent oracle: skimage.draw.polygon at the (block) centres of the window's grid."""
    shape = (window.height // downsample, window.width // downsample)
    out = np.zeros(shape, bool)
    for p in polygons:
        xy = np.asarray(p.exterior.coords)
        # Output pixel (R, C) is at slide (x, y) = (col + C d + (d-1)/2, row + R d + (d-1)/2).
        rows = (xy[:, 1] - window.row - (downsample - 1) / 2) / downsample
        cols = (xy[:, 0] - window.col - (downsample - 1) / 2) / downsample
        rr, cc = sk_polygon(rows, cols, shape)
        out[rr, cc] = True
    return out


# -- polygon / mask fixture pairs --------------------------------------------------------

CASES: dict[str, tuple[Any, tuple[int, int], list[tuple[int, int]]]] = {
    # Pixel centres on the boundary are inside (closed rule, like skimage).
    "integer square": (box(1, 1, 3, 3), (5, 5), [(r, c) for r in (1, 2, 3) for c in (1, 2, 3)]),
    # Edges on pixel boundaries: exactly the pixels within.
    "half-integer square": (box(0.5, 0.5, 2.5, 1.5), (4, 4), [(1, 1), (1, 2)]),
    "triangle": (
        Polygon([(0, 0), (4, 0), (0, 4)]),
        (5, 5),
        [(r, c) for r in range(5) for c in range(5) if r + c <= 4],
    ),
    "hole": (
        Polygon(box(0, 0, 4, 4).exterior.coords, [box(1.5, 1.5, 2.5, 2.5).exterior.coords]),
        (5, 5),
        [(r, c) for r in range(5) for c in range(5) if (r, c) != (2, 2)],
    ),
    "tall thin": (box(2.2, -10, 2.8, 10), (3, 5), []),
    "outside": (box(-10, -10, -1, -1), (3, 3), []),
    "GeoJSON dict": (
        {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 1], [0, 1], [0, 0]]]},
        (2, 4),
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_polygon_mask_pairs(name: str) -> None:
    geometry, shape, pixels = CASES[name]
    expected = np.zeros(shape, bool)
    for rc in pixels:
        expected[rc] = True
    mask = MaskRasterizer([geometry]).rasterize(shape)
    assert mask.dtype == np.bool_
    assert mask.shape == shape
    assert np.array_equal(mask, expected), mask.astype(int)


def test_geometry_kinds_accepted() -> None:
    class Geo:
        __geo_interface__: ClassVar[dict[str, Any]] = {
            "type": "Polygon",
            "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 0]]],
        }

    ann = Annotation(box(0, 0, 2, 2), "glomerulus")
    feature = ann.to_feature()
    r = MaskRasterizer([Geo(), ann, feature, shapely.MultiPolygon([box(5, 5, 6, 6)])])
    assert len(r) == 4
    assert r.rasterize((8, 8))[5:7, 5:7].all()
    with pytest.raises(AnnotationError, match="Point"):
        MaskRasterizer([shapely.Point(0, 0)])


def test_invalid_geometry_is_repaired() -> None:
    bowtie = Polygon([(0, 0), (4, 4), (4, 0), (0, 4), (0, 0)])
    mask = MaskRasterizer([bowtie]).rasterize((5, 5))
    expected = np.zeros((5, 5), bool)
    rr, cc = sk_polygon([0, 4, 0, 4], [0, 4, 4, 0], (5, 5))  # even-odd fill of the bow-tie
    expected[rr, cc] = True
    assert np.array_equal(mask, expected)


def test_empty_rasterizer() -> None:
    r = MaskRasterizer([])
    assert not r.rasterize((3, 4)).any()
    assert r.count_in((3, 4)) == 0
    assert not r.full_mask((3, 4)).any()


# -- agreement with skimage.draw.polygon ---------------------------------------------------


@st.composite
def star_polygons(draw: st.DrawFn, grid: float) -> Polygon:
    """Simple (star-shaped) polygons, vertices snapped to multiples of ``grid`` (0: none)."""
    n = draw(st.integers(3, 9))
    angles = sorted(draw(st.lists(st.floats(0, 2 * math.pi - 1e-3), min_size=n, max_size=n)))
    radii = draw(st.lists(st.floats(1, 14), min_size=n, max_size=n))
    cx = draw(st.floats(-5, 40))
    cy = draw(st.floats(-5, 40))
    xy = np.array(
        [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
    )
    if grid:
        xy = np.round(xy / grid) * grid
    p = Polygon(xy)
    assume(p.is_valid and p.area > 0.5)
    return p


windows = st.builds(
    Window,
    row=st.integers(-8, 20),
    col=st.integers(-8, 20),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    st.sampled_from([1.0, 0.5, 0.25, 0.0]).flatmap(
        lambda g: st.lists(star_polygons(g), min_size=1, max_size=3)
    ),
    windows,
)
@example(  # found by a random run: a subnormal vertex
    [Polygon([(1, 0), (1, 5e-324), (1.081, 1.683), (-0.416, 0.909)])], Window(0, 0, 1, 1)
)
def test_agrees_with_skimage_pixel_for_pixel(polygons: list[Polygon], window: Window) -> None:
    # A centre a hair off an edge is on it by the documented tolerance (BOUNDARY_TOLERANCE,
    # up to the buffer's mitre limit of 5 times it at a sharp vertex), which skimage does
    # not have: such cases say nothing (say 1.7e-9 under an edge, a vertex's x exactly).
    rows, cols = np.mgrid[
        window.row : window.row + window.height, window.col : window.col + window.width
    ]
    centres = shapely.points(cols.ravel(), rows.ravel())
    for polygon in polygons:
        # A subnormal vertex (a random run drew y = 5e-324) makes GEOS divide by zero on its way
        # to the right distance (0.54 and 0 at (0, 0) and (1, 0)): numpy warns, nothing is wrong.
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = shapely.distance(polygon.boundary, centres)
        assume(not ((distance > 0) & (distance <= 5 * BOUNDARY_TOLERANCE)).any())
    mask = MaskRasterizer(polygons).rasterize(window)
    assert np.array_equal(mask, skimage_mask(polygons, window))


# Integer vertices with d = 2 or 4 map to exact binary fractions in the oracle; with d = 3
# they would not (1/3), and skimage would then misplace centres that lie exactly on an
# edge, so d = 3 is checked with unsnapped vertices, where no centre lies on an edge.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    st.one_of(
        st.tuples(st.lists(star_polygons(1.0), min_size=1, max_size=3), st.sampled_from([2, 4])),
        st.tuples(st.lists(star_polygons(0.0), min_size=1, max_size=3), st.just(3)),
    ),
    st.integers(-4, 4),
    st.integers(-4, 4),
    st.integers(1, 12),
    st.integers(1, 12),
)
def test_downsample_agrees_with_skimage_block_centres(
    case: tuple[list[Polygon], int], r0: int, c0: int, h: int, w: int
) -> None:
    polygons, d = case
    window = Window(r0 * d, c0 * d, h * d, w * d)
    mask = MaskRasterizer(polygons).rasterize(window, downsample=d)
    assert mask.shape == (h, w)
    assert np.array_equal(mask, skimage_mask(polygons, window, d))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(star_polygons(0.5), min_size=1, max_size=4), windows)
def test_windows_are_slices_of_the_full_mask(polygons: list[Polygon], window: Window) -> None:
    r = MaskRasterizer(polygons)
    pad = 10
    big = r.rasterize(Window(-pad, -pad, 80, 80))
    expected = big[window.translate(pad, pad).to_slices()]
    assert np.array_equal(r.rasterize(window), expected)
    touched = r.rasterize(window, all_touched=True)
    assert np.all(touched >= r.rasterize(window))


def test_full_mask_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    import glomseg.annotations._rasterize as module

    polygons = [box(3, 1, 30, 9), Polygon([(0, 0), (40, 17), (10, 25)])]
    r = MaskRasterizer(polygons)
    whole = r.rasterize((27, 41))
    monkeypatch.setattr(module, "_BAND_PIXELS", 41 * 4)
    assert np.array_equal(r.full_mask((27, 41)), whole)
    assert np.array_equal(r.full_mask((27, 41), downsample=3), r.rasterize((27, 41), downsample=3))
    assert r.full_mask((27, 41), downsample=3).shape == (9, 14)


def test_all_touched() -> None:
    tiny = Polygon([(0.7, 0.7), (1.3, 0.7), (1.3, 1.2)])  # holds no pixel centre
    r = MaskRasterizer([tiny])
    assert not r.rasterize((3, 3)).any()
    touched = r.rasterize((3, 3), all_touched=True)
    assert touched.sum() == 1
    assert touched[1, 1]
    across = MaskRasterizer([box(0.7, 0.7, 1.7, 1.2)]).rasterize((3, 3), all_touched=True)
    assert np.array_equal(np.argwhere(across), [[1, 1], [1, 2]])


def test_only_polygons_touching_the_window_are_rasterized(monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio.features

    polygons = [
        box(x, y, x + 20, y + 20) for x in range(0, 10_000, 100) for y in range(0, 3000, 100)
    ]
    r = MaskRasterizer(polygons)
    seen: list[int] = []
    original = rasterio.features.rasterize

    def spy(shapes: Any, **kwargs: Any) -> Any:
        shapes = list(shapes)
        seen.append(len(shapes))
        return original(shapes, **kwargs)

    monkeypatch.setattr(rasterio.features, "rasterize", spy)
    mask = r.rasterize(Window(1090, 5090, 40, 40))
    assert seen == [1]
    assert mask[10:31, 10:31].all()
    assert mask.sum() == 21 * 21
    assert r.count_in(Window(1090, 5090, 40, 40)) == 1
    assert r.query(Window(0, 0, 250, 150)).tolist() == [0, 1, 2, 30, 31, 32]
    r.rasterize(Window(50_000, 50_000, 10, 10))
    assert seen == [1]  # nothing to burn: rasterio is not called


@pytest.mark.parametrize(
    ("target", "kwargs", "error", "message"),
    [
        ((0, 5), {}, ValueError, "positive"),
        ((2, 2, 2), {}, TypeError, "Window or a"),
        ("big", {}, TypeError, "Window or a"),
        ((4, 4), {"downsample": 0}, ValueError, "downsample must be"),
        ((4, 4), {"downsample": float("inf")}, ValueError, "downsample must be"),
    ],
)
def test_rasterize_rejects(target: Any, kwargs: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        MaskRasterizer([box(0, 0, 1, 1)]).rasterize(target, **kwargs)


# -- mask to polygons ----------------------------------------------------------------------


def test_mask_to_polygons_known() -> None:
    m = np.zeros((6, 7), bool)
    m[1:5, 1:6] = True
    m[2:4, 3] = False  # a hole
    m[5, 6] = True  # a diagonal speck: its own region under 4-connectivity
    polygons = mask_to_polygons(m, min_area=0)
    assert len(polygons) == 2
    body, speck = sorted(polygons, key=lambda p: -p.area)
    assert body.bounds == (0.5, 0.5, 5.5, 4.5)
    assert len(body.interiors) == 1
    assert body.area == 18
    assert speck.bounds == (5.5, 4.5, 6.5, 5.5)
    assert [p.area for p in mask_to_polygons(m, min_area=2)] == [18.0]


def test_mask_to_polygons_offsets() -> None:
    m = np.zeros((3, 3), np.uint8)
    m[1, 1] = 7
    (p,) = mask_to_polygons(m, offset=(100, 200), min_area=0)
    assert p.bounds == (200.5, 100.5, 201.5, 101.5)
    (q,) = mask_to_polygons(m, offset=(100, 200), downsample=4, min_area=0)
    assert q.bounds == (203.5, 103.5, 207.5, 107.5)
    (w,) = mask_to_polygons(m, offset=Window(100, 200, 6, 12), min_area=0)
    assert w.bounds == (203.5, 101.5, 207.5, 103.5)
    assert mask_to_polygons(np.zeros((0, 3), bool)) == []
    assert mask_to_polygons(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize(
    ("mask", "kwargs", "error", "message"),
    [
        (np.zeros((3, 3), np.float32), {}, TypeError, "dtype float32"),
        (np.zeros((3, 3, 1), bool), {}, ValueError, "2-D"),
        (np.zeros(3, bool), {}, ValueError, "2-D"),
        (
            np.zeros((3, 3), bool),
            {"offset": Window(0, 0, 3, 3), "downsample": 2},
            ValueError,
            "Window",
        ),
        (np.zeros((3, 3), bool), {"offset": (1.5, 2)}, TypeError, "offset"),
        (np.zeros((3, 3), bool), {"downsample": -1}, ValueError, "downsample"),
        (np.ones((3, 3), bool), {"min_area": -1}, ValueError, "min_area"),
    ],
)
def test_mask_to_polygons_rejects(mask: np.ndarray, kwargs: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        mask_to_polygons(mask, **kwargs)


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=16)),
    st.integers(-50, 50),
    st.integers(-50, 50),
    st.sampled_from([1, 2, 3]),
)
def test_rasterize_polygonize_rasterize_is_stable(
    mask: np.ndarray, row: int, col: int, d: int
) -> None:
    window = Window(row, col, mask.shape[0] * d, mask.shape[1] * d)
    polygons = mask_to_polygons(mask, offset=window, min_area=0)
    again = MaskRasterizer(polygons).rasterize(window, downsample=d)
    assert np.array_equal(again, mask)
    # And once more through polygons drawn from that mask.
    polygons2 = mask_to_polygons(again, offset=(row, col), downsample=d, min_area=0)
    assert sum(p.area for p in polygons2) == pytest.approx(int(mask.sum()) * d * d)
    assert np.array_equal(MaskRasterizer(polygons2).rasterize(window, downsample=d), mask)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(star_polygons(1.0), min_size=1, max_size=3))
def test_polygons_to_mask_to_polygons_to_mask(polygons: list[Polygon]) -> None:
    window = Window(-5, -5, 60, 60)
    r = MaskRasterizer(polygons)
    first = r.rasterize(window)
    second = MaskRasterizer(mask_to_polygons(first, offset=window, min_area=0)).rasterize(window)
    assert np.array_equal(first, second)


def test_mask_to_annotations_written_and_read_back(tmp_path: Path) -> None:
    m = np.zeros((40, 50), bool)
    m[5:25, 10:30] = True
    m[30:32, 40:42] = True  # 4 pixels: a speck at the default min_area
    annotations = mask_to_annotations(m, offset=(1000, 2000))
    assert len(annotations) == 1
    assert annotations[0].classification == "glomerulus"
    assert annotations[0].color == -3140401
    path = tmp_path / "pred.json"
    write_annotations(path, annotations)
    back = read_annotations(path)
    assert back == annotations
    r = MaskRasterizer(back).rasterize(Window(1000, 2000, 40, 50))
    m[30:32, 40:42] = False
    assert np.array_equal(r, m)


# -- real data -----------------------------------------------------------------------------


def _slides() -> list[tuple[Path, tuple[int, int], bool]]:
    """(json, (height, width), size known) for the 20 slides; unknown sizes from the bounds."""
    with (DATA / "slide_sizes.csv").open(newline="") as handle:
        sizes = {
            row["image_file"].split(".")[0]: (int(row["height_pixels"]), int(row["width_pixels"]))
            for row in csv.DictReader(handle)
        }
    with (DATA / "VAN_to_kaggle2021.csv").open(newline="") as handle:
        names = {}
        for row in csv.DictReader(handle):
            van = row["van_slide"]
            if "(geojson named " in van:  # VAN0011-RK-8-2-PAS_FFPE(geojson named VAN0011-RK-33-2)
                van = van.split("(geojson named ")[1].rstrip(")") + "-PAS_FFPE"
            names[van] = row["kaggle_id"]
    result = []
    for path in sorted(DATA.glob("*.json")):
        (kaggle,) = [k for van, k in names.items() if path.name.startswith(van)]
        if kaggle in sizes:
            result.append((path, sizes[kaggle], True))
        else:
            bounds = shapely.total_bounds([a.geometry for a in read_annotations(path)])
            result.append((path, (math.ceil(bounds[3]) + 1, math.ceil(bounds[2]) + 1), False))
    return result


SLIDES = _slides()


def test_slide_mapping_is_complete() -> None:
    assert len(SLIDES) == 20
    assert sum(known for _, _, known in SLIDES) == 13


def _windows(shape: tuple[int, int], size: int) -> Iterator[Window]:
    for row in range(0, shape[0], size):
        for col in range(0, shape[1], size):
            yield Window(row, col, min(size, shape[0] - row), min(size, shape[1] - col))


def _check_slide(path: Path, shape: tuple[int, int], downsample: int) -> None:
    with_outside = path.name.startswith("VAN0010-LK-155-40")
    if with_outside:
        with pytest.warns(UserWarning, match="outside the slide"):
            annotations = read_annotations(path, slide_shape=shape)
    else:
        annotations = read_annotations(path, slide_shape=shape)
    # Independent reference from shapely on the raw JSON geometries.
    import json

    raw = [shapely.geometry.shape(f["geometry"]) for f in json.loads(path.read_text())]
    slide = box(-0.5, -0.5, shape[1] - 0.5, shape[0] - 0.5)
    in_slide = [g for g in raw if g.intersects(slide)]
    expected_area = shapely.union_all(raw).intersection(slide).area

    r = MaskRasterizer(annotations)
    tracemalloc.start()
    pixels, touched = 0, set()
    size = 4096  # full-resolution window side
    for window in _windows(shape, size):
        hits = r.query(window, downsample=downsample)
        if not len(hits):
            continue
        touched.update(hits.tolist())
        pixels += int(np.count_nonzero(r.rasterize(window, downsample=downsample)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * (size // downsample) ** 2 + 32 * 2**20  # O(window), not O(slide)
    assert len(annotations) == len(raw)
    assert len(touched) == len(in_slide)
    assert pixels * downsample**2 == pytest.approx(expected_area, rel=0.01)


@pytest.mark.parametrize(
    ("path", "shape"),
    [(p, s) for p, s, _ in SLIDES],
    ids=[p.name[:18] for p, _, _ in SLIDES],
)
def test_real_slide_rasterizes_window_by_window_at_4x(path: Path, shape: tuple[int, int]) -> None:
    _check_slide(path, shape, downsample=4)


def test_real_slide_full_resolution_smallest() -> None:
    path, shape, _ = min(SLIDES, key=lambda s: s[1][0] * s[1][1])
    _check_slide(path, shape, downsample=1)


def test_real_polygons_agree_with_skimage_at_full_resolution() -> None:
    annotations = read_annotations(DATA / "VAN0003-LK-33-2-PAS_FFPE_glom_annotations.json")
    polygons = [a.geometry for a in annotations]
    r = MaskRasterizer(annotations)
    for p in polygons[:25]:
        x0, y0, x1, y1 = p.bounds
        window = Window.from_bounds(int(y0) - 3, int(x0) - 3, int(y1) + 4, int(x1) + 4)
        near = [polygons[i] for i in r.query(window)]
        assert np.array_equal(r.rasterize(window), skimage_mask(near, window))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "shape"),
    [(p, s) for p, s, _ in SLIDES],
    ids=[p.name[:18] for p, _, _ in SLIDES],
)
def test_real_slide_rasterizes_at_full_resolution(path: Path, shape: tuple[int, int]) -> None:
    _check_slide(path, shape, downsample=1)
