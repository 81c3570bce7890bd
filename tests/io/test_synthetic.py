from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, shape

from glomseg import Window
from glomseg.io.synthetic import make_glomeruli, render, write_synthetic_slide


@settings(max_examples=20)
@given(
    st.integers(0, 250),
    st.integers(0, 250),
    st.integers(1, 50),
    st.integers(1, 50),
    st.integers(0, 3),
)
def test_render_is_a_pure_function_of_slide_coordinates(row, col, h, w, seed):
    shape = (300, 300)
    glomeruli = make_glomeruli(shape, count=3, seed=seed)
    whole = render(Window(0, 0, *shape), shape, glomeruli, seed=seed)
    window = Window(row, col, h, w).clip(shape)
    assert window is not None
    np.testing.assert_array_equal(
        render(window, shape, glomeruli, seed=seed), whole[window.to_slices()]
    )


def test_glomeruli_are_darker_than_the_tissue_around_them():
    shape = (2000, 2000)
    glomeruli = make_glomeruli(shape, count=4, seed=0)
    assert len(glomeruli) == 4
    image = render(Window(0, 0, *shape), shape, glomeruli).astype(float).mean(axis=2)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    for g in glomeruli:
        dist = np.hypot(rows - g.row, cols - g.col)
        tuft = image[dist < g.radius * 0.8].mean()
        around = image[(dist > g.radius + 10) & (dist < g.radius + 30)].mean()
        assert tuft < around - 15, (g, tuft, around)


def test_glomeruli_do_not_overlap_and_lie_inside():
    shape = (3000, 4000)
    glomeruli = make_glomeruli(shape, seed=7)
    assert len(glomeruli) >= 3
    for i, a in enumerate(glomeruli):
        assert a.radius <= a.row < shape[0] - a.radius
        assert a.radius <= a.col < shape[1] - a.radius
        for b in glomeruli[i + 1 :]:
            assert np.hypot(a.row - b.row, a.col - b.col) > a.radius + b.radius


def test_annotation_json_is_hubmap_format_and_matches_the_drawing(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.tif", (800, 900), tile=64, seed=3)
    features = json.loads(slide.annotation_path.read_text())
    assert isinstance(features, list)
    assert len(features) == len(slide.glomeruli)
    for feature, g in zip(features, slide.glomeruli, strict=True):
        assert feature["type"] == "Feature"
        assert feature["properties"]["classification"]["name"] == "glomerulus"
        polygon = shape(feature["geometry"])
        assert polygon.is_valid
        # GeoJSON is [x, y] = [col, row]
        circle = Point(g.col, g.row).buffer(g.radius, quad_segs=64)
        assert polygon.symmetric_difference(circle).area < 0.02 * circle.area


def test_written_slide_has_requested_structure(tmp_path):
    slide = write_synthetic_slide(
        tmp_path / "p.tif",
        (200, 300),
        layout="planar",
        tile=None,
        rows_per_strip=16,
        compression="lzw",
    )
    with tifffile.TiffFile(slide.path) as tif:
        page = tif.pages[0]
        assert page.planarconfig == 2
        assert not page.is_tiled
        assert page.rowsperstrip == 16
        assert page.compression == 5
        assert tif.series[0].shape == (3, 200, 300)
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "planer"}, "did you mean 'planar'"),
        ({"compression": "jpg"}, "did you mean 'jpeg'"),
        ({"tile": 100}, "multiple of 16"),
        ({"tile": None, "compression": "jpeg"}, "needs a tile size"),
        ({"channels": 2}, "channels must be 1, 3 or 4"),
        ({"channels": 1, "layout": "planar"}, "needs layout='interleaved'"),
        ({"dtype": "float32"}, "dtype must be uint8 or uint16"),
        ({"levels": 2, "tile": None}, "levels must be >= 1"),
    ],
)
def test_bad_options_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_slide(tmp_path / "x.tif", (64, 64), **kwargs)
    assert not list(tmp_path.iterdir())
