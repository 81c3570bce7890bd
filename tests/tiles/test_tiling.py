"""Tests of the tile grid, tile names and the patchify bridge.

Closed-form counts, per axis of ``n`` full-resolution pixels, with ``T = tile_size *
downsample`` and ``S = stride * downsample``:

- ``drop``:  ``floor((n - T) / S) + 1`` if ``n >= T`` else ``0``
- ``shift`` and ``pad``:  ``ceil(max(n - T, 0) / S) + 1``

The grid is the product of the two axes, so ``count = rows(H) * cols(W)``.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from glomseg.io._window import Window
from glomseg.tiles._tiling import Tile, TileKey, Tiler, parse_tile_name, patchify_tiles, tile_name

EDGES = ("drop", "shift", "pad")


def expected_count(n: int, size: int, step: int, edge: str) -> int:
    if edge == "drop":
        return math.floor((n - size) / step) + 1 if n >= size else 0
    return math.ceil(max(n - size, 0) / step) + 1


@st.composite
def tilers(draw, *, edges=EDGES, max_tile=40, max_down=3):
    edge = draw(st.sampled_from(edges))
    tile_size = draw(st.integers(1, max_tile))
    max_stride = tile_size if edge != "drop" else max_tile + 10
    stride = draw(st.integers(1, max_stride))
    downsample = draw(st.integers(1, max_down))
    return Tiler(tile_size, stride, edge=edge, downsample=downsample)


@st.composite
def tilers_and_shapes(draw, *, edges=EDGES, max_side=150):
    tiler = draw(tilers(edges=edges))
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    if tiler.full_stride < 3:  # keep the tile count small for quick pixel-level checks
        limit = 30 * tiler.full_stride
        shape = (min(shape[0], limit), min(shape[1], limit))
    return tiler, shape


def coverage_counts(tiles: list[Tile], shape: tuple[int, int], margin: int) -> np.ndarray:
    """How many tiles cover each pixel of a canvas extended by ``margin`` past the slide."""
    counts = np.zeros((shape[0] + margin, shape[1] + margin), dtype=np.int32)
    for tile in tiles:
        counts[tile.window.to_slices()] += 1
    return counts


# -- hand-made grids ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("edge", "rows", "cols"),
    [
        ("drop", [0, 2, 4, 6], [0, 2]),
        ("shift", [0, 2, 4, 6], [0, 2, 3]),
        ("pad", [0, 2, 4, 6], [0, 2, 4]),
    ],
)
def test_small_grid_origins(edge, rows, cols):
    tiles = Tiler(4, 2, edge=edge).tiles((10, 7))
    assert [t.origin for t in tiles] == [(r, c) for r in rows for c in cols]
    assert [(t.grid_row, t.grid_col) for t in tiles] == [
        (i, j) for i in range(len(rows)) for j in range(len(cols))
    ]
    assert all(t.window.shape == (4, 4) and t.out_shape == (4, 4) for t in tiles)


def test_seed_grid_on_the_seed_example_slide():
    tiler = Tiler(4000, 2000)
    # The seed's example slide is 31299 x 44066 pixels.
    assert tiler.grid_shape((31299, 44066, 3)) == (14, 21)
    last = tiler.tiles((31299, 44066))[-1]
    assert last.window == Window(26000, 40000, 4000, 4000)
    assert (last.grid_row, last.grid_col) == (13, 20)


def test_downsample_sizes_are_output_pixels():
    tiler = Tiler(512, 256, downsample=2)
    assert (tiler.full_tile_size, tiler.full_stride) == (1024, 512)
    tiles = tiler.tiles((2048, 1600))
    assert tiler.grid_shape((2048, 1600)) == (3, 2)
    assert tiles[1].window == Window(0, 512, 1024, 1024)
    assert tiles[1].out_shape == (512, 512)
    assert tiles[1].downsample == 2


def test_stride_defaults_to_tile_size_and_tiler_is_frozen():
    tiler = Tiler(64)
    assert tiler.stride == 64
    assert tiler.edge == "drop"
    assert tiler.downsample == 1
    with pytest.raises(AttributeError):
        tiler.tile_size = 3  # type: ignore[misc]


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        Tiler(4, 2, "shift")  # type: ignore[misc]


def test_shift_on_a_slide_smaller_than_a_tile_gives_one_padded_tile():
    tiles = Tiler(10, 5, edge="shift").tiles((6, 30))
    assert [t.origin for t in tiles] == [(0, 0), (0, 5), (0, 10), (0, 15), (0, 20)]
    assert all(t.window.height == 10 for t in tiles)


def test_drop_on_a_slide_smaller_than_a_tile_is_empty():
    tiler = Tiler(10)
    assert tiler.grid_shape((9, 100)) == (0, 10)
    assert tiler.count((9, 100)) == 0
    assert tiler.tiles((9, 100)) == []


# -- validation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((0,), {}, ValueError, "tile_size must be > 0, got 0"),
        ((-4,), {}, ValueError, "tile_size must be > 0, got -4"),
        ((4, 0), {}, ValueError, "stride must be > 0, got 0"),
        ((4,), {"downsample": 0}, ValueError, "downsample must be > 0, got 0"),
        ((4.5,), {}, TypeError, "tile_size must be an integer, got 4.5"),
        ((True,), {}, TypeError, "tile_size must be an integer, got True"),
        ((4, "2"), {}, TypeError, "stride must be an integer, got '2'"),
        ((4,), {"downsample": 1.5}, TypeError, "downsample must be an integer, got 1.5"),
        ((4,), {"edge": "shfit"}, ValueError, "got 'shfit'; did you mean 'shift'"),
        ((4,), {"edge": "wrap"}, ValueError, "edge must be one of 'drop', 'pad', 'shift'"),
        (
            (4, 5),
            {"edge": "shift"},
            ValueError,
            "stride must be <= tile_size with edge='shift'.*stride=5, tile_size=4",
        ),
        ((4, 5), {"edge": "pad"}, ValueError, "stride must be <= tile_size with edge='pad'"),
    ],
)
def test_invalid_tilers_name_the_parameter(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        Tiler(*args, **kwargs)


def test_drop_allows_a_stride_larger_than_the_tile():
    assert [t.origin for t in Tiler(2, 5).tiles((2, 13))] == [(0, 0), (0, 5), (0, 10)]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((5,), "shape must have at least 2 entries"), ((0, 5), r"shape\[0\] must be > 0, got 0")],
)
def test_invalid_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        Tiler(4).tiles(shape)


def test_numpy_integers_are_accepted():
    tiler = Tiler(np.int64(4), np.int32(2), downsample=np.uint8(2))
    assert type(tiler.tile_size) is int
    assert tiler.count((np.int64(16), np.int64(16), 3)) == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, Window(0, 0, 2, 2), (2, 2)), "grid_row must be >= 0, got -1"),
        ((0, 0, Window(0, 0, 4, 6), (2, 2)), "same whole multiple"),
        ((0, 0, Window(0, 0, 5, 5), (2, 2)), "same whole multiple"),
        ((0, 0, Window(0, 0, 4, 4), (0, 4)), r"out_shape\[0\] must be > 0"),
    ],
)
def test_invalid_tiles(args, message):
    with pytest.raises(ValueError, match=message):
        Tile(*args)


# -- properties ---------------------------------------------------------------------
@given(
    edge=st.sampled_from(EDGES),
    n=st.integers(1, 100_000),
    size=st.integers(1, 5000),
    step_fraction=st.floats(0.01, 1.5),
    downsample=st.integers(1, 4),
)
def test_counts_match_the_closed_form(edge, n, size, step_fraction, downsample):
    stride = max(1, round(size * step_fraction))
    if edge != "drop":
        stride = min(stride, size)
    tiler = Tiler(size, stride, edge=edge, downsample=downsample)
    full_size, full_step = size * downsample, stride * downsample
    rows = expected_count(n, full_size, full_step, edge)
    cols = expected_count(n + 7, full_size, full_step, edge)
    assert tiler.grid_shape((n, n + 7)) == (rows, cols)
    assert tiler.count((n, n + 7)) == rows * cols


@given(tilers_and_shapes())
def test_counts_match_a_brute_force_enumeration(case):
    tiler, (height, width) = case
    size, step = tiler.full_tile_size, tiler.full_stride

    def brute(n: int) -> int:
        origins = []
        start = 0
        while True:
            if start + size <= n:
                origins.append(start)
            elif tiler.edge == "drop":
                break
            else:
                origins.append(start)  # pad: the last, partial tile (shift moves it)
                break
            if start + size >= n:
                break
            start += step
        return len(origins)

    assert tiler.grid_shape((height, width)) == (brute(height), brute(width))
    assert len(tiler.tiles((height, width))) == tiler.count((height, width))


@given(tilers_and_shapes())
def test_tiles_are_unique_and_fill_the_grid(case):
    tiler, shape = case
    tiles = tiler.tiles(shape)
    n_rows, n_cols = tiler.grid_shape(shape)
    assert [(t.grid_row, t.grid_col) for t in tiles] == [
        (i, j) for i in range(n_rows) for j in range(n_cols)
    ]
    assert len({t.window for t in tiles}) == len(tiles)
    assert len({t.name("s") for t in tiles}) == len(tiles)
    for t in tiles:
        assert t.window.shape == (tiler.full_tile_size,) * 2
        assert t.out_shape == (tiler.tile_size,) * 2
        assert t.downsample == tiler.downsample


@given(tilers_and_shapes(edges=("shift",)))
def test_shift_covers_every_pixel_and_stays_inside(case):
    tiler, shape = case
    tiles = tiler.tiles(shape)
    size = tiler.full_tile_size
    counts = coverage_counts(tiles, shape, margin=size)
    assert (counts[: shape[0], : shape[1]] > 0).all()
    slide = Window.from_shape(shape)
    for t in tiles:
        if shape[0] >= size and shape[1] >= size:
            assert slide.contains(t.window)
        # Per axis: inside, or (a slide smaller than a tile cannot hold it) starting at 0.
        for start, stop, n in (
            (t.window.row, t.window.row_stop, shape[0]),
            (t.window.col, t.window.col_stop, shape[1]),
        ):
            if n >= size:
                assert start >= 0
                assert stop <= n
            else:
                assert start == 0


@given(tilers_and_shapes(edges=("pad",)))
def test_pad_covers_everything_and_only_the_last_row_and_col_stick_out(case):
    tiler, shape = case
    tiles = tiler.tiles(shape)
    n_rows, n_cols = tiler.grid_shape(shape)
    counts = coverage_counts(tiles, shape, margin=tiler.full_tile_size)
    assert (counts[: shape[0], : shape[1]] > 0).all()
    slide = Window.from_shape(shape)
    for t in tiles:
        assert t.window.intersects(slide)
        assert t.window.row % tiler.full_stride == 0
        assert t.window.col % tiler.full_stride == 0
        if t.window.row_stop > shape[0]:
            assert t.grid_row == n_rows - 1
        if t.window.col_stop > shape[1]:
            assert t.grid_col == n_cols - 1


@given(tilers_and_shapes(edges=("drop",)))
def test_drop_stays_inside_and_leaves_less_than_a_step_uncovered(case):
    tiler, shape = case
    tiles = tiler.tiles(shape)
    slide = Window.from_shape(shape)
    size, step = tiler.full_tile_size, tiler.full_stride
    for t in tiles:
        assert slide.contains(t.window)
        assert t.window.row % step == 0
        assert t.window.col % step == 0
    if tiles:
        last = tiles[-1]
        # One more step would not fit: the grid is maximal.
        assert last.window.row + step + size > shape[0]
        assert last.window.col + step + size > shape[1]


@given(tilers_and_shapes(edges=("drop", "pad")))
def test_downsampled_grid_is_the_upsampled_output_grid(case):
    tiler, (height, width) = case
    d = tiler.downsample
    plain = Tiler(tiler.tile_size, tiler.stride, edge=tiler.edge)
    # drop can only use whole output pixels; pad covers the partial last one.
    rounding = (lambda n: n // d) if tiler.edge == "drop" else (lambda n: -(-n // d))
    out_shape = (rounding(height), rounding(width))
    if min(out_shape) == 0:
        assert tiler.count((height, width)) == 0
        return
    expected = [
        (t.grid_row, t.grid_col, t.window.upsample(d), t.out_shape) for t in plain.tiles(out_shape)
    ]
    got = [(t.grid_row, t.grid_col, t.window, t.out_shape) for t in tiler.tiles((height, width))]
    assert got == expected


@given(tilers_and_shapes(edges=("shift",)))
def test_downsampled_shift_grid_has_the_output_grid_shape(case):
    tiler, (height, width) = case
    d = tiler.downsample
    plain = Tiler(tiler.tile_size, tiler.stride, edge="shift")
    assert tiler.grid_shape((height, width)) == plain.grid_shape((-(-height // d), -(-width // d)))


# -- names ----------------------------------------------------------------------------
slide_ids = st.one_of(
    st.sampled_from(["VAN0013-LK-202-96", "26dc41664", "van0013_train_17", "a", "x__r001_c002"]),
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
        min_size=1,
        max_size=30,
    ).filter(lambda s: "/" not in s and "\\" not in s and not any(c.isspace() for c in s)),
    st.text(alphabet="ab_-.0123r c", min_size=1, max_size=12).filter(lambda s: " " not in s),
)


@given(slide_ids, st.integers(0, 20_000), st.integers(0, 20_000))
def test_names_round_trip(slide_id, row, col):
    name = tile_name(slide_id, row, col)
    assert parse_tile_name(name) == (slide_id, row, col)
    assert parse_tile_name(name) == TileKey(slide_id, row, col)
    assert TileKey(slide_id, row, col).name == name


@given(slide_ids, slide_ids, st.integers(0, 1200), st.integers(0, 1200))
def test_distinct_keys_give_distinct_names(a, b, row, col):
    if a != b:
        assert tile_name(a, row, col) != tile_name(b, row, col)
    assert tile_name(a, row, col) != tile_name(a, row, col + 1)
    assert tile_name(a, row, col) != tile_name(a, row + 1, col)


def test_name_format():
    assert tile_name("VAN0013-LK-202-96", 3, 12) == "VAN0013-LK-202-96__r003_c012"
    assert tile_name("van0013_train_17_", 1000, 7) == "van0013_train_17___r1000_c007"
    assert parse_tile_name("van0013_train_17___r1000_c007") == ("van0013_train_17_", 1000, 7)
    tile = Tiler(4, 2).tiles((10, 10))[5]
    assert tile.name("26dc41664") == "26dc41664__r001_c001"
    assert tile.key("26dc41664") == ("26dc41664", 1, 1)


@pytest.mark.parametrize(
    ("slide_id", "error", "message"),
    [
        ("", ValueError, "slide_id must not be empty"),
        ("a/b", ValueError, "whitespace or path separators, got 'a/b'"),
        ("a\\b", ValueError, "whitespace or path separators"),
        ("a b", ValueError, "whitespace or path separators"),
        ("a\nb", ValueError, "whitespace or path separators"),
        (17, TypeError, "slide_id must be a str, got int"),
    ],
)
def test_bad_slide_ids_are_rejected(slide_id, error, message):
    with pytest.raises(error, match=message):
        tile_name(slide_id, 0, 0)


def test_negative_indices_are_rejected():
    with pytest.raises(ValueError, match="grid_col must be >= 0, got -1"):
        tile_name("a", 0, -1)


@pytest.mark.parametrize(
    "name",
    [
        "26dc41664",
        "26dc41664_r001_c002",
        "__r001_c002",
        "26dc41664__r1_c2",
        "26dc41664__r0001_c002",
        "26dc41664__r001_c002.png",
        "26dc41664__r-01_c002",
        "26dc41664__r001_c٣٣٣",
        "a b__r001_c002",
    ],
)
def test_non_names_are_rejected(name):
    with pytest.raises(ValueError, match="tile name"):
        parse_tile_name(name)


# -- patchify -------------------------------------------------------------------------
# patchify pins numpy<2, so it is an optional extra. Where it is missing these tests skip,
# except under GLOMSEG_REQUIRE_PATCHIFY=1: `python3 dev.py test` sets it to run them in
# .venv-patchify (numpy 1.x, the core install and the patchify extra).


def _patchify():  # type: ignore[no-untyped-def]
    try:
        import patchify
    except ImportError:
        if os.environ.get("GLOMSEG_REQUIRE_PATCHIFY"):
            raise
        pytest.skip("patchify is not installed; python3 dev.py test checks it in .venv-patchify")
    return patchify


def test_patchify_tiles_names_its_extra_when_patchify_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "patchify", None)  # import patchify now fails
    with pytest.raises(ImportError, match=r"pip install 'glomseg\[patchify\]'"):
        patchify_tiles(np.zeros((8, 8, 3), dtype=np.uint8), Tiler(4))


@st.composite
def images_and_drop_tilers(draw):
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, 3]))
    shape = (height, width) if channels is None else (height, width, channels)
    seed = draw(st.integers(0, 2**32 - 1))
    image = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    tiler = Tiler(
        draw(st.integers(1, 12)), draw(st.integers(1, 15)), downsample=draw(st.integers(1, 2))
    )
    return image, tiler


@given(images_and_drop_tilers())
def test_patchify_grid_equals_the_drop_grid(case):
    _patchify()
    image, tiler = case
    patches = patchify_tiles(image, tiler)
    tiles = tiler.tiles(image.shape)
    size = tiler.full_tile_size
    assert patches.shape == (*tiler.grid_shape(image.shape), size, size, *image.shape[2:])
    assert patches.dtype == image.dtype
    for tile in tiles:
        np.testing.assert_array_equal(
            patches[tile.grid_row, tile.grid_col], image[tile.window.to_slices()]
        )


def test_patchify_seed_call_agrees_with_the_tiler():
    patchify = _patchify()
    image = np.random.default_rng(0).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
    tiler = Tiler(40, 20)
    seed_patches = patchify.patchify(image, (40, 40, 3), step=20)
    assert seed_patches.shape[:2] == tiler.grid_shape(image.shape)
    for tile in tiler.tiles(image.shape):
        np.testing.assert_array_equal(
            seed_patches[tile.grid_row, tile.grid_col, 0], image[tile.window.to_slices()]
        )


def test_patchify_tiles_is_a_read_only_view():
    _patchify()
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    patches = patchify_tiles(image, Tiler(4))
    assert np.shares_memory(patches, image)
    with pytest.raises(ValueError, match="read-only"):
        patches[0, 0, 0, 0, 0] = 1


def test_patchify_tiles_on_an_image_smaller_than_a_tile_is_empty():
    _patchify()
    patches = patchify_tiles(np.zeros((3, 9), dtype=bool), Tiler(4, 2))
    assert patches.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_patchify_tiles_refuses_other_edges(edge):
    with pytest.raises(ValueError, match="edge='drop' only"):
        patchify_tiles(np.zeros((8, 8, 3), dtype=np.uint8), Tiler(4, 2, edge=edge))


def test_patchify_tiles_refuses_other_ranks():
    with pytest.raises(ValueError, match="must be 2-D"):
        patchify_tiles(np.zeros((8,), dtype=np.uint8), Tiler(4))
