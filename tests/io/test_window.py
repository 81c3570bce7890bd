from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from glomseg import Window
from glomseg.errors import WindowError

coords = st.integers(-50, 50)
sizes = st.integers(1, 60)
windows = st.builds(Window, coords, coords, sizes, sizes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 0, 0, 1), "height must be > 0, got 0"),
        ((0, 0, 1, -3), "width must be > 0, got -3"),
        ((0.5, 0, 1, 1), "row must be an integer, got 0.5"),
        (("1", 0, 1, 1), "row must be an integer, got '1'"),
    ],
)
def test_invalid_windows_say_which_value(args, message):
    with pytest.raises(WindowError, match=message):
        Window(*args)


def test_numpy_integers_are_accepted_and_stored_as_int():
    w = Window(np.int64(3), np.int32(4), np.uint16(5), 6)
    assert w == Window(3, 4, 5, 6)
    assert type(w.row) is int


def test_negative_offset_cannot_slice():
    with pytest.raises(WindowError, match="negative offset"):
        Window(-1, 0, 3, 3).to_slices()


def test_window_is_frozen():
    w = Window(0, 0, 1, 1)
    with pytest.raises(AttributeError):
        w.row = 3  # type: ignore[misc]


@given(windows, windows)
def test_intersection_matches_pixel_sets(a, b):
    grid = np.zeros((200, 200), dtype=np.uint8)
    grid[a.translate(100, 100).to_slices()] += 1
    grid[b.translate(100, 100).to_slices()] += 1
    both = grid == 2
    inter = a.intersection(b)
    if inter is None:
        assert not both.any()
        assert not a.intersects(b)
    else:
        expected = np.zeros_like(both)
        expected[inter.translate(100, 100).to_slices()] = True
        assert (both == expected).all()
        assert a.contains(inter)
        assert b.contains(inter)
    assert a.intersection(b) == b.intersection(a)


@given(windows, st.integers(1, 80), st.integers(1, 80))
def test_clip_stays_inside_and_keeps_the_overlap(w, h, wd):
    clipped = w.clip((h, wd))
    if clipped is None:
        assert w.intersection(Window(0, 0, h, wd)) is None
    else:
        assert Window(0, 0, h, wd).contains(clipped)
        assert w.contains(clipped)
        assert clipped.size == w.intersection(Window(0, 0, h, wd)).size  # type: ignore[union-attr]


@given(windows, st.integers(1, 8))
def test_downsample_covers_and_upsample_inverts(w, f):
    small = w.downsample(f)
    assert small.upsample(f).contains(w)
    # minimal: shrinking the covering window on any side would uncover a pixel
    assert small.row * f <= w.row < (small.row + 1) * f
    assert (small.row_stop - 1) * f < w.row_stop <= small.row_stop * f
    assert Window(w.row * f, w.col * f, w.height * f, w.width * f).downsample(f) == w


@given(windows, coords, coords)
def test_translate_and_relative_to_are_inverse(w, dr, dc):
    other = Window(dr, dc, 5, 5)
    assert w.relative_to(other).translate(other.row, other.col) == w


@given(windows, st.integers(0, 10))
def test_expand_grows_every_side(w, m):
    e = w.expand(m)
    assert e.contains(w)
    assert e.shape == (w.height + 2 * m, w.width + 2 * m)
