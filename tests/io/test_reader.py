from __future__ import annotations

import itertools
import pickle
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage.transform import downscale_local_mean

from glomseg import SlideReader, Window
from glomseg.errors import SlideReadError, WindowError
from glomseg.io.synthetic import render, write_synthetic_slide

SHAPE = (150, 190)
LAYOUTS = ["interleaved", "planar", "pages", "series", "ome"]
CASES = [
    (layout, tile, compression)
    for layout, tile, compression in itertools.product(
        LAYOUTS, [32, None], ["none", "lzw", "deflate", "jpeg"]
    )
    if not (compression == "jpeg" and tile is None)
]


class _Slides(dict):
    def __repr__(self) -> str:  # keep hypothesis' failure reports short
        return f"<{len(self)} synthetic slides>"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Every layout x segment kind x codec, with its expected RGB pixels."""
    folder = tmp_path_factory.mktemp("slides")
    made = _Slides()
    for layout, tile, compression in CASES:
        path = folder / f"{layout}-{tile}-{compression}.tif"
        slide = write_synthetic_slide(
            path, SHAPE, layout=layout, tile=tile, rows_per_strip=7, compression=compression, seed=5
        )
        if compression == "jpeg":  # lossy: the truth is what the codec decodes
            expected = _decode_with_tifffile(path)
        else:
            expected = render(Window(0, 0, *SHAPE), SHAPE, slide.glomeruli, seed=5)
        made[(layout, tile, compression)] = (path, expected)
    return made


def _decode_with_tifffile(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if len(tif.series) == 3:
            return np.stack([s.asarray() for s in tif.series], axis=-1)
        data = tif.series[0].asarray().squeeze()
    return data if data.shape[-1] == 3 else np.moveaxis(data, 0, -1)


window_strategy = st.builds(
    Window,
    st.integers(-20, SHAPE[0] - 1),
    st.integers(-20, SHAPE[1] - 1),
    st.integers(1, 90),
    st.integers(1, 90),
)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
@settings(max_examples=15)
@given(window=window_strategy)
def test_read_equals_the_same_slice_of_the_source(slides, case, window):
    path, expected = slides[case]
    inside = window.clip(SHAPE)
    with SlideReader(path, cache_bytes=2**20 if window.row % 2 else 0) as reader:
        assert reader.shape == SHAPE
        if inside is None:
            with pytest.raises(WindowError, match="lies outside the slide"):
                reader.read(window)
            return
        got = reader.read(window, fill=7)
    assert got.shape == (*window.shape, 3)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(
        got[inside.relative_to(window).to_slices()], expected[inside.to_slices()]
    )
    outside = np.ones(window.shape, dtype=bool)
    outside[inside.relative_to(window).to_slices()] = False
    assert (got[outside] == 7).all()


def test_whole_read_and_layout_description(slides):
    path, expected = slides[("planar", None, "lzw")]
    with SlideReader(path) as reader:
        np.testing.assert_array_equal(reader.read(), expected)
        assert reader.layout == "striped 7x190, LZW, 3 x uint8 planar"
        assert reader.channels == 3
        assert reader.dtype == np.uint8


def test_layout_names_the_arrangement(slides):
    expected = {
        "interleaved": "interleaved",
        "planar": "planar",
        "pages": "3 pages",
        "ome": "3 pages",
        "series": "one series per channel",
    }
    for layout, word in expected.items():
        with SlideReader(slides[(layout, 32, "none")][0]) as reader:
            assert word in reader.layout
            assert reader.layout.startswith("tiled 32x32")


def test_cache_is_bounded_and_reused(slides):
    path, expected = slides[("interleaved", None, "deflate")]
    with SlideReader(path, cache_bytes=5000) as reader:
        for r in range(0, 121, 20):
            np.testing.assert_array_equal(reader.read(Window(r, 0, 30, 190)), expected[r : r + 30])
            assert reader._cache.nbytes <= 5000


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    path = tmp_path_factory.mktemp("pyr") / "pyramid.ome.tif"
    slide = write_synthetic_slide(path, (512, 768), tile=64, levels=3, layout="ome", seed=2)
    full = render(Window(0, 0, 512, 768), (512, 768), slide.glomeruli, seed=2)
    return path, full


def test_pyramid_levels_are_found(pyramid):
    path, _ = pyramid
    with SlideReader(path) as reader:
        assert reader.level_count == 3
        assert reader.level_shapes == ((512, 768), (256, 384), (128, 192))
        assert reader.level_downsamples == (1.0, 2.0, 4.0)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_pyramid_downsampled_read_matches_reference_resize(pyramid, factor):
    path, full = pyramid
    window = Window(64, 128, 256, 320)
    with SlideReader(path) as reader:
        got = reader.read(window, downsample=factor)
    reference = downscale_local_mean(full[window.to_slices()].astype(float), (factor, factor, 1))
    assert got.shape == reference.shape
    # aligned windows: the writer's levels are exact block means, so only rounding differs
    assert np.abs(got - reference).max() <= 1.0


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_whole_factor_read_without_pyramid_is_exact_block_mean(slides, factor):
    path, full = slides[("interleaved", 32, "lzw")]
    window = Window(10, 20, 15 * factor, 20 * factor)
    with SlideReader(path) as reader:
        assert reader.level_count == 1
        got = reader.read(window, downsample=factor)
    reference = downscale_local_mean(full[window.to_slices()].astype(float), (factor, factor, 1))
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("out_shape", [(37, 51), (100, 19), (1, 1)])
def test_fractional_resample_is_close_to_reference(pyramid, out_shape):
    path, full = pyramid
    window = Window(0, 0, 512, 768)
    with SlideReader(path) as reader:
        got = reader.read(window, out_shape=out_shape)
    reference = _area_resize(full, out_shape)
    assert got.shape == (*out_shape, 3)
    # stated tolerance: mean absolute difference of at most 3 grey levels
    assert np.abs(got - reference).mean() <= 3.0


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Row i averages input span [i * n_in / n_out, (i + 1) * n_in / n_out)."""
    edges = np.arange(n_out + 1) * n_in / n_out
    pixel = np.arange(n_in)
    lo = np.maximum(edges[:-1, None], pixel[None, :])
    hi = np.minimum(edges[1:, None], pixel[None, :] + 1)
    weights = np.clip(hi - lo, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def _area_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = _area_weights(image.shape[0], shape[0])
    cols = _area_weights(image.shape[1], shape[1])
    return np.einsum("ij,jkc,lk->ilc", rows, image.astype(float), cols, optimize=True)


def test_downsampled_read_stays_bounded_in_bands(slides, monkeypatch):
    import glomseg.io._resample as reader_module

    monkeypatch.setattr(reader_module, "_BAND_BYTES", 2000)
    path, full = slides[("pages", None, "none")]
    with SlideReader(path) as reader:
        got = reader.read(Window(0, 0, 150, 190), downsample=2)
    reference = downscale_local_mean(full[:150, :190].astype(float), (2, 2, 1))
    assert got.shape == (75, 95, 3)
    assert np.abs(got - reference).max() <= 0.5 + 1e-9


def test_downsampled_read_of_window_partly_outside_pads(slides):
    path, full = slides[("interleaved", 32, "none")]
    with SlideReader(path) as reader:
        got = reader.read(Window(-20, -20, 40, 40), downsample=2, fill=0)
    assert got.shape == (20, 20, 3)
    assert (got[:10, :10] == 0).all()
    reference = downscale_local_mean(full[:20, :20].astype(float), (2, 2, 1))
    assert np.abs(got[10:, 10:] - reference).max() <= 0.5 + 1e-9


@pytest.mark.parametrize(
    ("channels", "dtype"), [(1, "uint8"), (4, "uint8"), (3, "uint16"), (1, "uint16")]
)
def test_grayscale_rgba_and_16_bit_are_converted(tmp_path, channels, dtype):
    slide = write_synthetic_slide(
        tmp_path / "s.tif", (64, 80), tile=16, channels=channels, dtype=dtype, seed=1
    )
    rgb = render(Window(0, 0, 64, 80), (64, 80), slide.glomeruli, seed=1)
    with SlideReader(slide.path) as reader:
        got = reader.read()
        assert reader.channels == channels
        assert reader.dtype == np.dtype(dtype)
    if channels == 1:
        gray = rgb.mean(axis=2).round().astype(np.uint8)
        np.testing.assert_array_equal(got, np.repeat(gray[..., None], 3, axis=2))
    else:  # RGBA with opaque alpha, or uint16 = uint8 * 257: both give back the RGB
        np.testing.assert_array_equal(got, rgb)


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, 16:, 3] = 255  # right half opaque, left half transparent
    rgba[:8, :16, 3] = 128
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with SlideReader(tmp_path / "a.tif") as reader:
        got = reader.read()
    assert (got[:, 16:] == (200, 0, 0)).all()
    assert (got[8:, :16] == 255).all()
    expected = round((200 * 128 + 255 * 127) / 255)
    assert (got[:8, :16, 0] == expected).all()
    assert (got[:8, :16, 1] == round(255 * 127 / 255)).all()


def test_float_pixels_are_taken_as_unit_range(tmp_path):
    data = np.linspace(-0.5, 1.5, 64 * 3, dtype=np.float32).reshape(8, 8, 3)
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="rgb")
    with SlideReader(tmp_path / "f.tif") as reader:
        got = reader.read()
    np.testing.assert_array_equal(got, np.rint(np.clip(data, 0, 1) * 255).astype(np.uint8))


def test_bigtiff(tmp_path):
    slide = write_synthetic_slide(tmp_path / "big.tif", (70, 90), tile=32, bigtiff=True)
    with tifffile.TiffFile(slide.path) as tif:
        assert tif.is_bigtiff
    with SlideReader(slide.path) as reader:
        np.testing.assert_array_equal(
            reader.read(), render(Window(0, 0, 70, 90), (70, 90), slide.glomeruli)
        )


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_plain_images_open_too(tmp_path, suffix):
    rgb = render(Window(0, 0, 60, 70), (60, 70), ())
    Image.fromarray(rgb).save(tmp_path / f"p{suffix}")
    expected = np.asarray(Image.open(tmp_path / f"p{suffix}").convert("RGB"))
    with SlideReader(tmp_path / f"p{suffix}") as reader:
        assert reader.shape == (60, 70)
        assert "plain image" in reader.layout
        np.testing.assert_array_equal(reader.read(Window(5, 6, 10, 11)), expected[5:15, 6:17])
        assert reader.read(downsample=2).shape == (30, 35, 3)


def test_bundled_real_sample_matches_its_jpeg_source():
    sample = Path(__file__).parents[2] / "examples" / "data" / "sample"
    paths = sorted(sample.glob("*.tif"))
    assert len(paths) == 20
    for path in paths:
        with SlideReader(path) as reader:
            assert reader.shape == (1200, 1600)
            window = reader.read(Window(600, 800, 100, 100))
        # tifffile's own whole-file decode is the reference for every layout
        np.testing.assert_array_equal(window, _decode_with_tifffile(path)[600:700, 800:900])


# -- picklable, multi-process ---------------------------------------------------


def _read_corner(reader: SlideReader) -> np.ndarray:
    return reader.read(Window(0, 0, 16, 16))


def test_reader_pickles_and_works_in_other_processes(slides):
    path, expected = slides[("interleaved", 32, "lzw")]
    with SlideReader(path, cache_bytes=1234) as reader:
        with pickle.loads(pickle.dumps(reader)) as clone:
            assert clone.path == reader.path
            assert clone._cache_bytes == 1234
            np.testing.assert_array_equal(clone.read(), expected)
        with ProcessPoolExecutor(2) as pool:
            results = list(pool.map(_read_corner, [reader, reader]))
    for result in results:
        np.testing.assert_array_equal(result, expected[:16, :16])


# -- memory ---------------------------------------------------------------------


def test_memory_is_bounded_by_the_window_not_the_slide(tmp_path):
    slide = write_synthetic_slide(tmp_path / "m.tif", (3000, 4000), tile=256, compression="lzw")
    with SlideReader(slide.path, cache_bytes=0) as reader:
        tracemalloc.start()
        try:
            window = reader.read(Window(1000, 1000, 300, 300))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert window.shape == (300, 300, 3)
    slide_bytes = 3000 * 4000 * 3
    assert peak < 4 * 2**20, f"peak {peak} bytes for a 270 kB window of a {slide_bytes} byte slide"


def test_striped_slide_decodes_only_the_strips_a_window_touches(tmp_path, monkeypatch):
    slide = write_synthetic_slide(tmp_path / "s.tif", (400, 300), tile=None, rows_per_strip=10)
    decoded = []
    with SlideReader(slide.path, cache_bytes=0, max_workers=1) as reader:
        plane = reader._levels[0].planes[0]
        original = plane.decode

        def counting(data, index, **kwargs):
            decoded.append(index)
            return original(data, index, **kwargs)

        monkeypatch.setattr(plane, "decode", counting)
        reader.read(Window(95, 10, 30, 20))
    assert sorted(decoded) == [9, 10, 11, 12]


# -- bad input -------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SlideReadError, match=r"nope\.tif: no such file"):
        SlideReader(tmp_path / "nope.tif")


def test_directory(tmp_path):
    with pytest.raises(SlideReadError, match="is a directory"):
        SlideReader(tmp_path)


def test_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels")
    with pytest.raises(SlideReadError, match=r"notes\.tif: not a readable TIFF"):
        SlideReader(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(SlideReadError, match=r"fake\.png: not a readable image"):
        SlideReader(path)


def test_a_plain_image_too_large_to_decode_whole_is_named(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 pixels: over twice the limit
    with pytest.raises(SlideReadError, match=r"huge\.png: too large to decode whole.*tiled TIFF"):
        SlideReader(path)


def test_truncated_file(tmp_path):
    slide = write_synthetic_slide(tmp_path / "t.tif", (200, 200), tile=64, compression="lzw")
    data = slide.path.read_bytes()
    # keep the header and first IFD (written before the data) but cut the pixel data
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match=r"cut\.tif"), SlideReader(cut) as reader:
        reader.read()


def test_truncated_before_first_ifd(tmp_path):
    path = tmp_path / "stub.tif"
    path.write_bytes(b"II*\x00\x08\x00\x00\x00\x10")
    with pytest.raises(SlideReadError, match=r"stub\.tif"):
        SlideReader(path)


def test_corrupt_segment_data(tmp_path):
    slide = write_synthetic_slide(tmp_path / "c.tif", (128, 128), tile=64, compression="deflate")
    with tifffile.TiffFile(slide.path) as tif:
        offset = tif.pages[0].dataoffsets[1]
    data = bytearray(slide.path.read_bytes())
    data[offset : offset + 40] = b"\xff" * 40
    slide.path.write_bytes(bytes(data))
    with SlideReader(slide.path) as reader:
        reader.read(Window(0, 0, 64, 64))  # the intact tile still reads
        with pytest.raises(SlideReadError, match=r"c\.tif: cannot decode segment 1"):
            reader.read(Window(0, 64, 64, 64))


def test_too_many_channels(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((5, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(SlideReadError, match=r"z\.tif: unsupported layout: .* 5 same-size pages"):
        SlideReader(tmp_path / "z.tif")
    five = np.zeros((16, 16, 5), np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", five, photometric="minisblack", planarconfig="contig")
    with pytest.raises(SlideReadError, match=r"c\.tif: unsupported layout: .* 4 extra sample"):
        SlideReader(tmp_path / "c.tif")


def test_unsupported_pixel_type(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((16, 16), np.complex64))
    with pytest.raises(SlideReadError, match=r"c\.tif: unsupported pixel type complex64"):
        SlideReader(tmp_path / "c.tif")


def test_window_errors(slides):
    path, _ = slides[("interleaved", 32, "none")]
    with SlideReader(path) as reader:
        with pytest.raises(WindowError, match="outside the slide"):
            reader.read(Window(150, 0, 5, 5))
        with pytest.raises(WindowError, match="extends outside"):
            reader.read(Window(145, 0, 10, 5), boundary="error")
        with pytest.raises(ValueError, match="did you mean 'pad'"):
            reader.read(Window(0, 0, 5, 5), boundary="pda")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="downsample must be a finite number > 0, got 0"):
            reader.read(Window(0, 0, 5, 5), downsample=0)
        with pytest.raises(WindowError, match="out_shape must be 2 positive"):
            reader.read(Window(0, 0, 5, 5), out_shape=(0, 3))
        with pytest.raises(ValueError, match="at most one"):
            reader.read(Window(0, 0, 5, 5), out_shape=(2, 2), downsample=2)
        with pytest.raises(ValueError, match=r"fill must be an integer in 0\.\.255"):
            reader.read(Window(0, 0, 5, 5), fill=300)
        with pytest.raises(TypeError, match=r"glomseg\.Window"):
            reader.read((0, 0, 5, 5))  # type: ignore[arg-type]


def test_closed_reader(slides):
    path, _ = slides[("interleaved", 32, "none")]
    reader = SlideReader(path)
    reader.close()
    assert reader.closed
    with pytest.raises(SlideReadError, match="closed"):
        reader.read(Window(0, 0, 2, 2))


def test_bad_options(slides):
    path, _ = slides[("interleaved", 32, "none")]
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        SlideReader(path, cache_bytes=-1)
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        SlideReader(path, max_workers=0)


@settings(max_examples=25)
@given(
    window=st.builds(
        Window, st.integers(0, 100), st.integers(0, 140), st.integers(8, 50), st.integers(8, 50)
    ),
    out_h=st.integers(1, 20),
    out_w=st.integers(1, 20),
)
def test_resampled_read_is_the_exact_area_average(slides, window, out_h, out_w):
    path, full = slides[("interleaved", 32, "deflate")]
    with SlideReader(path) as reader:
        got = reader.read(window, out_shape=(out_h, out_w))
    reference = _area_resize(full[window.to_slices()], (out_h, out_w))
    assert got.shape == (out_h, out_w, 3)
    # float32 accumulation, then rounding to nearest: at most half a grey level off
    assert np.abs(got - reference).max() <= 0.5 + 1e-3


@settings(max_examples=15)
@given(
    window=st.builds(
        Window, st.integers(0, 300), st.integers(0, 500), st.integers(64, 212), st.integers(64, 268)
    ),
    factor=st.floats(1.5, 9.0),
)
@example(window=Window(0, 0, 64, 67), factor=2.0)  # 34 cells of 1.97 px: read from level 0
def test_pyramid_resampled_read_is_close_to_the_area_average(pyramid, window, factor):
    path, full = pyramid
    with SlideReader(path) as reader:
        got = reader.read(window, downsample=factor)
        # the level is chosen by the output cells' size, which rounding the output shape
        # can make smaller than ``factor`` (a 67-px width at 2.0 gives 34 cells of 1.97 px)
        cell = min(window.height / got.shape[0], window.width / got.shape[1])
        level = max(i for i, d in enumerate(reader.level_downsamples) if d <= cell * 1.001)
        ds = reader.level_downsamples[level]
    with tifffile.TiffFile(path) as tif:
        pixels = tif.series[0].levels[level].asarray()
    pixels = np.moveaxis(pixels.reshape(3, *pixels.shape[-2:]), 0, -1).astype(float)
    # the contract: the exact area average of the chosen level over the window's footprint
    n_r, n_c = got.shape[:2]
    rows = window.row / ds + np.arange(n_r + 1) * (window.height / ds / n_r)
    cols = window.col / ds + np.arange(n_c + 1) * (window.width / ds / n_c)
    wr, wc = _edge_weights(rows, pixels.shape[0]), _edge_weights(cols, pixels.shape[1])
    exact = np.einsum("ij,jkc,lk->ilc", wr, pixels, wc, optimize=True) / (
        wr.sum(1)[:, None, None] * wc.sum(1)[None, :, None]
    )
    assert np.abs(got - exact).max() <= 0.5 + 1e-3
    # and the level is the writer's block mean: close to full resolution, though windows off
    # the level's grid are blurred by up to one level pixel (a mean of about 5 at worst here)
    reference = _area_resize(full[window.to_slices()], got.shape[:2])
    assert np.abs(got - reference).mean() <= 8.0


def test_segment_shape_and_cache_bound(slides):
    with SlideReader(slides[("planar", None, "lzw")][0], cache_bytes=99) as reader:
        assert reader.segment_shape == (7, 190)
        assert reader.cache_bytes == 99
    with SlideReader(slides[("interleaved", 32, "none")][0]) as reader:
        assert reader.segment_shape == (32, 32)


# -- fractional grids (prediction at a fractional downsample) -------------------------------------
def _edge_weights(edges: np.ndarray, n_in: int) -> np.ndarray:
    """Dense area weights of cells [edges[i], edges[i+1]) over n_in pixels (outside: no pixel)."""
    pixel = np.arange(n_in)
    lo = np.maximum(edges[:-1, None], pixel[None, :])
    hi = np.minimum(edges[1:, None], pixel[None, :] + 1)
    return np.clip(hi - lo, 0, None)


@settings(max_examples=30)
@given(
    start=st.integers(0, 60),
    count=st.integers(1, 25),
    cols=st.integers(1, 30),
    ds=st.sampled_from([0.3, 0.5, 0.75, 1.5, 2.5, 3.7, 7.25]),
)
def test_fractional_grid_read_is_the_exact_area_average_padded_with_white(
    slides, start, count, cols, ds
):
    path, full = slides[("interleaved", 32, "deflate")]
    rows = np.arange(start, start + count + 1) * ds
    col_edges = np.arange(cols + 1) * ds
    with SlideReader(path) as reader:
        got = reader._read_area(rows, col_edges)
    h, w = full.shape[:2]
    # pad with white far enough for any cell, then average exactly in float64
    padded = np.full((int(rows[-1]) + h + 1, int(col_edges[-1]) + w + 1, 3), 255.0)
    padded[:h, :w] = full
    wr = _edge_weights(rows, padded.shape[0])
    wc = _edge_weights(col_edges, padded.shape[1])
    reference = np.einsum("ij,jkc,lk->ilc", wr, padded, wc, optimize=True) / (
        wr.sum(1)[:, None, None] * wc.sum(1)[None, :, None]
    )
    assert got.shape == (count, cols, 3)
    assert np.abs(got - reference).max() <= 0.5 + 1e-3


def test_fractional_grid_read_does_not_depend_on_the_grouping(slides, monkeypatch):
    import glomseg.io._resample as reader_module

    path, _ = slides[("pages", None, "none")]
    ds = 1.7
    rows, cols = np.arange(0, 41) * ds, np.arange(0, 60) * ds
    with SlideReader(path) as reader:
        whole = reader._read_area(rows, cols)
        parts = np.concatenate([reader._read_area(rows[i : i + 8], cols) for i in range(0, 40, 7)])
        monkeypatch.setattr(reader_module, "_BAND_BYTES", 4000)  # many small groups
        banded = reader._read_area(rows, cols)
    np.testing.assert_array_equal(parts, whole)
    np.testing.assert_array_equal(banded, whole)


# -- pixel size --------------------------------------------------------------------------------
RGB = np.zeros((8, 12, 3), dtype=np.uint8)


def _pixel_size(path: Path) -> float | None:
    with SlideReader(path) as reader:
        return reader.pixel_size_um


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),  # tifffile writes resolution 1/1 with unit "none"
        ({"resolution": (20000, 20000), "resolutionunit": "CENTIMETER"}, 0.5),
        ({"resolution": (101600, 101600), "resolutionunit": "INCH"}, 0.25),
        ({"resolution": (2.0, 2.0), "resolutionunit": "NONE"}, None),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a dpi default, not a scan
        (
            {
                "description": "Aperio Image Library v12.0.15\n8x12 (256x256) JPEG/RGB|AppMag = 20|"
                "MPP = 0.4990|Filename = a"
            },
            0.499,
        ),
        ({"imagej": True, "resolution": (4.0, 4.0), "metadata": {"unit": "micron"}}, 0.25),
        (
            {
                "ome": True,
                "metadata": {"axes": "YXS", "PhysicalSizeX": 0.46, "PhysicalSizeY": 0.46},
            },
            0.46,
        ),
        (
            {
                "ome": True,
                "metadata": {
                    "axes": "YXS",
                    "PhysicalSizeX": 500.0,
                    "PhysicalSizeXUnit": "nm",
                    "PhysicalSizeY": 500.0,
                    "PhysicalSizeYUnit": "nm",
                },
            },
            0.5,
        ),
        ({"ome": True, "metadata": {"axes": "YXS"}}, None),
    ],
)
def test_pixel_size_from_each_kind_of_metadata(tmp_path, kwargs, expected):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, RGB, photometric="rgb", **kwargs)
    got = _pixel_size(path)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "sides",
    [
        {"PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3},
        {"PhysicalSizeX": 0.3},  # one side only (it read as no size): square pixels
    ],
)
def test_ome_pixel_size_wins_over_resolution_tags(tmp_path, sides):
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(
        path,
        RGB,
        photometric="rgb",
        ome=True,
        metadata={"axes": "YXS", **sides},
        resolution=(10000, 10000),
        resolutionunit="CENTIMETER",
    )
    assert _pixel_size(path) == pytest.approx(0.3)
    alone = tmp_path / "a.ome.tif"  # and without the tags
    tifffile.imwrite(alone, RGB, photometric="rgb", ome=True, metadata={"axes": "YXS", **sides})
    assert _pixel_size(alone) == pytest.approx(0.3)


def test_anisotropic_pixels_warn_and_give_the_mean(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(
        path, RGB, photometric="rgb", resolution=(20000, 10000), resolutionunit="CENTIMETER"
    )
    with SlideReader(path) as reader, pytest.warns(UserWarning, match=r"s\.tif: pixel width 0.5"):
        assert reader.pixel_size_um == pytest.approx(0.75)
    within = tmp_path / "t.tif"
    tifffile.imwrite(
        within, RGB, photometric="rgb", resolution=(20000, 20100), resolutionunit="CENTIMETER"
    )
    assert _pixel_size(within) == pytest.approx((0.5 + 1e4 / 20100) / 2)  # no warning


def test_plain_images_have_no_pixel_size_and_closed_readers_say_so(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    assert _pixel_size(tmp_path / "a.png") is None
    reader = SlideReader(tmp_path / "a.png")
    reader.close()
    with pytest.raises(SlideReadError, match="closed"):
        _ = reader.pixel_size_um


def test_fractional_grid_read_uses_the_pyramid_and_stays_close(pyramid):
    path, full = pyramid
    ds = 4.6
    rows, cols = np.arange(0, 50) * ds, np.arange(0, 80) * ds
    with SlideReader(path) as reader:
        assert max(reader.level_downsamples) > 1
        got = reader._read_area(rows, cols)
    n_r, n_c = len(rows) - 1, len(cols) - 1
    padded = np.full((int(rows[-1]) + 2, int(cols[-1]) + 2, 3), 255.0)
    h, w = min(full.shape[0], padded.shape[0]), min(full.shape[1], padded.shape[1])
    padded[:h, :w] = full[:h, :w]
    wr, wc = _edge_weights(rows, padded.shape[0]), _edge_weights(cols, padded.shape[1])
    reference = np.einsum("ij,jkc,lk->ilc", wr, padded, wc, optimize=True) / (
        wr.sum(1)[:, None, None] * wc.sum(1)[None, :, None]
    )
    assert got.shape == (n_r, n_c, 3)
    # stated tolerance of pyramid reads: mean absolute difference of at most 3 grey levels
    assert np.abs(got - reference).mean() <= 3.0
