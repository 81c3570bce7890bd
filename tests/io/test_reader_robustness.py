"""SlideReader on real-world and bad TIFFs: every photometric interpretation, bit depth,
extra samples, page stacks, missing tiles, SVS thumbnails, cut and corrupt files, bad
arguments. Pixels are compared with Pillow's decoding or with tifffile's decoding plus
an explicit conversion written here; refusals must be typed glomseg errors naming the file.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms
from skimage.transform import downscale_local_mean

from glomseg import SlideReader, Window
from glomseg.errors import GlomsegError, SlideReadError, SlideReadWarning, WindowError
from glomseg.io.synthetic import write_synthetic_slide

RNG = np.random.default_rng(7)


# -- helpers -----------------------------------------------------------------------------------
def _pillow_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read(path: Path, **kwargs: object) -> np.ndarray:
    with SlideReader(path) as reader:
        return reader.read(**kwargs)  # type: ignore[arg-type]


def _pack(values: np.ndarray, bits: int) -> bytes:
    """Pack ``(h, w)`` integers MSB-first, ``bits`` each, every row padded to a whole byte."""
    h, w = values.shape
    per = 8 // bits
    padded = np.zeros((h, -(-w // per) * per), dtype=np.uint8)
    padded[:, :w] = values
    groups = padded.reshape(h, -1, per)
    out = np.zeros(groups.shape[:2], dtype=np.uint8)
    for i in range(per):
        out |= groups[..., i] << (8 - bits * (i + 1))
    return out.tobytes()


def _write_packed(path: Path, values: np.ndarray, bits: int, photometric: str, **kw) -> Path:
    """A one-strip TIFF of ``bits``-bit samples (tifffile's own packing needs newer codecs)."""
    tifffile.imwrite(
        path,
        iter([_pack(values, bits)]),
        shape=values.shape,
        dtype=np.uint8,
        bitspersample=bits,
        photometric=photometric,
        rowsperstrip=values.shape[0],
        **kw,
    )
    return path


def _patch_tag(path: Path, code: int, values: list[int], page: int = 0) -> None:
    """Overwrite the values of an integer tag in place."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[page].tags[code]
        fmt = tif.byteorder + {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
        where, count = tag.valueoffset, tag.count
    assert len(values) <= count
    data = bytearray(path.read_bytes())
    for i, value in enumerate(values):
        struct.pack_into(fmt, data, where + i * struct.calcsize(fmt), value)
    path.write_bytes(bytes(data))


def _refused(path: Path, pattern: str) -> None:
    with pytest.raises(SlideReadError, match=pattern) as info, SlideReader(path) as reader:
        reader.read()
    assert str(path) in str(info.value)


# -- bit depths and photometric interpretations -------------------------------------------------
@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_grey_matches_pillow(tmp_path, bits, photometric):
    values = RNG.integers(0, 2**bits, (9, 13), dtype=np.uint8)
    path = _write_packed(tmp_path / "g.tif", values, bits, photometric)
    got = _read(path)
    np.testing.assert_array_equal(got, _pillow_rgb(path))
    # and the independent conversion: scale 0 .. 2**bits - 1 to 0 .. 255, MINISWHITE inverted
    top = 2**bits - 1
    level = values if photometric == "minisblack" else top - values
    expected = np.rint(level.astype(float) * 255 / top).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
def test_one_bit_bool_pages_match_pillow(tmp_path, photometric):
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, RNG.integers(0, 2, (20, 17)).astype(bool), photometric=photometric)
    np.testing.assert_array_equal(_read(path), _pillow_rgb(path))


def test_miniswhite_8_and_16_bit(tmp_path):
    grey = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "w8.tif", grey, photometric="miniswhite")
    np.testing.assert_array_equal(_read(tmp_path / "w8.tif"), _pillow_rgb(tmp_path / "w8.tif"))
    deep = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "w16.tif", deep, photometric="miniswhite")
    expected = np.rint((65535 - deep.astype(float)) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(_read(tmp_path / "w16.tif")[..., 0], expected)


def test_12_bit_grey_is_scaled_by_its_bit_depth(tmp_path):
    values = RNG.integers(0, 4096, (6, 8), dtype=np.uint16)
    a, b = values[:, 0::2].astype(np.uint32), values[:, 1::2].astype(np.uint32)
    packed = np.stack([a >> 4, ((a & 15) << 4) | (b >> 8), b & 255], axis=-1).astype(np.uint8)
    path = tmp_path / "g12.tif"
    tifffile.imwrite(
        path, iter([packed.tobytes()]), shape=values.shape, dtype=np.uint16, bitspersample=12,
        photometric="minisblack", rowsperstrip=6,
    )  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.asarray(), values)  # the packing is right
    expected = np.rint(values.astype(float) * 255 / 4095).astype(np.uint8)
    np.testing.assert_array_equal(_read(path)[..., 1], expected)


def test_palette_images_match_pillow(tmp_path):
    index = RNG.integers(0, 256, (16, 24), dtype=np.uint8)
    exact_map = RNG.integers(0, 256, (3, 256)).astype(np.uint16) * 257  # 8-bit colours, 16-bit map
    tifffile.imwrite(tmp_path / "p8.tif", index, photometric="palette", colormap=exact_map)
    np.testing.assert_array_equal(_read(tmp_path / "p8.tif"), _pillow_rgb(tmp_path / "p8.tif"))
    small = index % 16
    path = _write_packed(
        tmp_path / "p4.tif", small, 4, "palette",
        extratags=[(320, "H", 48, exact_map[:, :16].ravel(), True)],
    )  # fmt: skip
    np.testing.assert_array_equal(_read(path), _pillow_rgb(path))


def test_palette_16_bit_and_8_bit_colour_maps(tmp_path):
    index = RNG.integers(0, 256, (16, 24), dtype=np.uint8)
    deep_map = RNG.integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=deep_map)
    expected = np.rint(deep_map.T[index].astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(_read(tmp_path / "p.tif"), expected)
    # a map whose entries are all below 256 holds 8-bit colours (libtiff reads it so too)
    byte_map = RNG.integers(0, 256, (3, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "q.tif", index, photometric="palette", colormap=byte_map)
    np.testing.assert_array_equal(_read(tmp_path / "q.tif"), byte_map.T[index].astype(np.uint8))


def test_cmyk_matches_pillow_and_the_ink_formula(tmp_path):
    cmyk = RNG.integers(0, 256, (14, 18, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated")
    np.testing.assert_array_equal(_read(tmp_path / "c.tif"), _pillow_rgb(tmp_path / "c.tif"))
    deep = RNG.integers(0, 65536, (14, 18, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", deep, photometric="separated")
    unit = deep / 65535.0
    expected = np.rint(255 * (1 - unit[..., :3]) * (1 - unit[..., 3:])).astype(np.uint8)
    np.testing.assert_array_equal(_read(tmp_path / "c16.tif"), expected)


def test_cielab_matches_pillow_with_little_cms(tmp_path):
    lab = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    lab[0, :3] = [(255, 0, 0), (0, 0, 0), (128, 0, 0)]  # white, black, mid grey (a = b = 0)
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="cielab")
    got = _read(tmp_path / "lab.tif")
    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    with Image.open(tmp_path / "lab.tif") as image:  # Pillow's own TIFF CIELab decoding
        expected = np.asarray(ImageCms.applyTransform(image, transform))
    np.testing.assert_array_equal(got, expected)
    # neutral anchors: L* 100 is white, 0 black, 50 % the sRGB grey 119
    assert np.abs(got[0, 0].astype(int) - 255).max() <= 1
    assert got[0, 1].max() <= 1
    assert np.abs(got[0, 2].astype(int) - 119).max() <= 1


def test_uncompressed_ycbcr_matches_pillow(tmp_path):
    ycc = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "y.tif", ycc, photometric="ycbcr")
    got = _read(tmp_path / "y.tif").astype(int)
    assert np.abs(got - _pillow_rgb(tmp_path / "y.tif")).max() <= 1  # Pillow: fixed point


@pytest.mark.parametrize(
    ("extrasamples", "kind"), [(["assocalpha"], "premultiplied"), (["unspecified"], "ignored")]
)
def test_rgb_extra_samples(tmp_path, extrasamples, kind):
    rgba = RNG.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    if kind == "premultiplied":
        rgba[..., :3] = np.minimum(rgba[..., :3], rgba[..., 3:])  # valid premultiplied colour
    tifffile.imwrite(tmp_path / "x.tif", rgba, photometric="rgb", extrasamples=extrasamples)
    got = _read(tmp_path / "x.tif")
    if kind == "premultiplied":  # over white: colour + (1 - alpha) * white
        expected = rgba[..., :3].astype(int) + 255 - rgba[..., 3:].astype(int)
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_array_equal(got, rgba[..., :3])


def test_grey_with_alpha_is_composited_over_white(tmp_path):
    ga = RNG.integers(0, 256, (8, 9, 2), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "ga.tif", ga, photometric="minisblack", planarconfig="contig",
        extrasamples=["unassalpha"],
    )  # fmt: skip
    with Image.open(tmp_path / "ga.tif") as image:
        assert image.mode == "LA"
        la = np.asarray(image).astype(int)
    a = la[..., 1]
    expected = (la[..., 0] * a + 255 * (255 - a) + 127) // 255
    np.testing.assert_array_equal(_read(tmp_path / "ga.tif")[..., 2], expected)


def _with_photometric(tmp_path: Path, code: int) -> Path:
    path = tmp_path / f"ph{code}.tif"
    tifffile.imwrite(path, RNG.integers(0, 256, (8, 8), dtype=np.uint8), photometric="minisblack")
    _patch_tag(path, 262, [code])
    return path


@pytest.mark.parametrize("code", [4, 9, 10, 32803, 32844, 34892, 99])
def test_photometrics_it_cannot_convert_are_refused(tmp_path, code):
    _refused(_with_photometric(tmp_path, code), r"ph\d+\.tif: (unsupported|corrupt|cannot)")


def test_other_unconvertible_layouts_are_refused(tmp_path):
    ink = tmp_path / "ink.tif"
    tifffile.imwrite(
        ink, np.zeros((8, 8, 4), np.uint8), photometric="separated",
        extratags=[(332, "H", 1, 2, True)],
    )  # fmt: skip
    _refused(ink, r"ink\.tif: unsupported separated .*InkSet 2")
    two = np.zeros((8, 8, 2), np.uint8)
    tifffile.imwrite(
        tmp_path / "gx.tif", two, photometric="minisblack", planarconfig="contig",
        extrasamples=["unspecified"],
    )  # fmt: skip
    _refused(tmp_path / "gx.tif", r"gx\.tif: unsupported layout: .*not alpha")
    palette = tmp_path / "pa.tif"  # tifffile writes no such file: patch a grey + alpha one
    tifffile.imwrite(
        palette, np.zeros((8, 8, 2), np.uint8), photometric="minisblack",
        planarconfig="contig", extrasamples=["unassalpha"],
        extratags=[(320, "H", 3 * 256, np.zeros(3 * 256, np.uint16), True)],
    )  # fmt: skip
    _patch_tag(palette, 262, [3])
    _refused(tmp_path / "pa.tif", r"pa\.tif: unsupported PALETTE image with an alpha sample")


def test_old_style_jpeg_is_refused_as_unsupported(tmp_path):
    path = tmp_path / "ojpeg.tif"
    tifffile.imwrite(path, RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), photometric="rgb")
    _patch_tag(path, 259, [6])
    _refused(path, r"ojpeg\.tif: unsupported old-style JPEG")


@pytest.mark.parametrize(
    ("tag", "value", "what"), [(259, 32809, "compression"), (317, 77, "predictor")]
)
def test_codecs_and_predictors_without_a_decoder_are_refused(tmp_path, tag, value, what):
    path = tmp_path / "codec.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), compression="zlib", predictor=True)
    _patch_tag(path, tag, [value])
    _refused(path, rf"codec\.tif: unsupported {what} ")


def test_subsampled_ycbcr_without_jpeg_is_refused_as_unsupported(tmp_path):
    path = tmp_path / "ycc.tif"
    ycc = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tifffile.imwrite(path, ycc, photometric="ycbcr", compression="lzw")
    _patch_tag(path, 530, [2, 2])
    _refused(path, r"ycc\.tif: unsupported YCbCr with chroma subsampling \(2, 2\) and LZW")


# -- page stacks and series --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "axis"),
    [
        ({"imagej": True, "metadata": {"axes": "ZYX"}}, "Z"),
        ({"imagej": True, "metadata": {"axes": "TYX"}}, "T"),
        ({"ome": True, "metadata": {"axes": "ZYX"}}, "Z"),
        ({"ome": True, "metadata": {"axes": "TYX"}}, "T"),
    ],
)
@pytest.mark.parametrize("planes", [2, 3])
def test_z_stacks_and_time_series_are_refused(tmp_path, kwargs, axis, planes):
    stack = RNG.integers(0, 256, (planes, 8, 8), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack", **kwargs)
    _refused(tmp_path / "s.tif", rf"s\.tif: unsupported layout: .*{planes} along {axis}")


def test_two_pages_of_a_plain_multipage_file_are_refused(tmp_path):
    with tifffile.TiffWriter(tmp_path / "m.tif") as tw:
        for _ in range(2):
            tw.write(np.zeros((8, 8), np.uint8), photometric="minisblack", metadata=None)
    _refused(tmp_path / "m.tif", r"m\.tif: unsupported layout: .*2 same-size pages")


def test_three_channel_pages_are_rgb(tmp_path):
    stack = RNG.integers(0, 256, (3, 8, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.ome.tif", stack, ome=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(_read(tmp_path / "c.ome.tif"), np.moveaxis(stack, 0, -1))
    with tifffile.TiffWriter(tmp_path / "g.tif") as tw:
        for plane in stack:
            tw.write(plane, photometric="minisblack", metadata=None)
    np.testing.assert_array_equal(_read(tmp_path / "g.tif"), np.moveaxis(stack, 0, -1))
    # one MINISBLACK page of three samples (a HuBMAP (3, H, W) file): R, G, B too
    tifffile.imwrite(tmp_path / "p.tif", stack, photometric="minisblack", planarconfig="separate")
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert tif.pages[0].samplesperpixel == 3
        assert tif.pages[0].photometric == 1
    np.testing.assert_array_equal(_read(tmp_path / "p.tif"), np.moveaxis(stack, 0, -1))


@pytest.mark.parametrize("count", [2, 4])
def test_same_size_grey_series_other_than_three_are_refused(tmp_path, count):
    with tifffile.TiffWriter(tmp_path / "series.tif") as tw:
        for _ in range(count):
            tw.write(np.zeros((8, 8), np.uint8), photometric="minisblack", metadata={})
    _refused(tmp_path / "series.tif", rf"series\.tif: unsupported layout: {count} same-size grey")


# -- missing tiles and corrupt offset tables ---------------------------------------------------
@pytest.fixture
def tiled(tmp_path):
    rgb = RNG.integers(0, 200, (64, 96, 3), dtype=np.uint8)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, rgb, tile=(32, 32), compression="zlib", photometric="rgb")
    return path, rgb


def test_tiles_without_data_read_as_fill_with_a_warning_naming_them(tiled):
    path, rgb = tiled
    with tifffile.TiffFile(path) as tif:
        counts = list(tif.pages[0].databytecounts)
    counts[1] = counts[4] = 0  # tiles 1 and 4 (of 2 x 3): no data
    _patch_tag(path, 325, counts)
    with SlideReader(path) as reader:
        with pytest.warns(SlideReadWarning, match=r"t\.tif: tile 1 of .*rows 0-31, cols 32-63"):
            got = reader.read()
        expected = rgb.copy()
        expected[0:32, 32:64] = 255
        expected[32:64, 32:64] = 255
        np.testing.assert_array_equal(got, expected)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # each tile is named once
            again = reader.read(Window(0, 0, 32, 96), fill=0)
        np.testing.assert_array_equal(again[:, 32:64], 0)
        np.testing.assert_array_equal(again[:, :32], rgb[:32, :32])
        small = reader.read(downsample=2)  # resampled reads average the fill in
        reference = downscale_local_mean(expected.astype(float), (2, 2, 1))
        assert np.abs(small - reference).max() <= 0.5 + 1e-3


def test_offset_zero_with_data_is_a_corrupt_offset_table(tiled):
    path, _ = tiled
    _patch_tag(path, 324, [0])
    _refused(path, r"t\.tif: corrupt offset table: tile 0 of .* offset 0 and byte count \d+")


# -- Aperio SVS: thumbnail, label and macro are not levels ------------------------------------
def _write_svs(path: Path, base: np.ndarray, *, level: bool) -> None:
    h, w = base.shape[:2]
    desc = f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (64x64) JPEG/RGB Q=70|MPP = 0.5"
    # an SVS thumbnail is about 4x smaller but not a block mean: nearest pixels, odd size
    thumb = base[:: h // 66, :: w // 83][:66, :83]
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(64, 64), description=desc, metadata=None)
        tw.write(thumb, description=desc + "\nthumbnail", metadata=None)
        if level:
            mean = downscale_local_mean(base.astype(float), (4, 4, 1)).round().astype(np.uint8)
            tw.write(mean, tile=(64, 64), description=desc + " -> level 1", metadata=None)
        tw.write(base[:40, :50], subfiletype=1, description="Aperio label", metadata=None)
        tw.write(base[:60, :90], subfiletype=9, description="Aperio macro", metadata=None)


@pytest.mark.parametrize("level", [False, True])
def test_svs_thumbnail_label_and_macro_are_not_pyramid_levels(tmp_path, level):
    base = RNG.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    path = tmp_path / "slide.svs"
    _write_svs(path, base, level=level)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        assert [s.name for s in tif.series][1] == "Thumbnail"
    with SlideReader(path) as reader:
        assert reader.level_shapes == (((256, 320), (64, 80)) if level else ((256, 320),))
        got = reader.read(downsample=4)
    exact = downscale_local_mean(base.astype(float), (4, 4, 1))
    assert np.abs(got - exact).max() <= 0.5 + 1e-3


# -- files that are not slides -----------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 8, 12])
def test_files_cut_inside_the_header(tmp_path, size):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    path.write_bytes(path.read_bytes()[:size])
    _refused(path, r"cut\.tif: ")


def test_a_path_longer_than_the_file_system_allows(tmp_path):
    path = tmp_path / ("x" * 300 + ".tif")
    with pytest.raises(SlideReadError, match="cannot access the file") as info:
        SlideReader(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def open_it() -> None:
        try:
            SlideReader(fifo)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=open_it, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("SlideReader hangs on a FIFO")
    assert isinstance(outcome[0], SlideReadError)
    assert "pipe.tif: not a regular file" in str(outcome[0])


# -- read() arguments --------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    rgb = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "small.tif", rgb, tile=(16, 16))
    return tmp_path / "small.tif", rgb


@pytest.mark.parametrize(
    "kwargs",
    [
        {"out_shape": (0.5, 3)},
        {"out_shape": (2.0, 3)},
        {"out_shape": (2, 3, 1)},
        {"out_shape": (True, 3)},
        {"out_shape": 5},
        {"downsample": float("nan")},
        {"downsample": float("inf")},
        {"downsample": "2"},
        {"fill": 1.7},
        {"fill": True},
        {"fill": -1},
        {"boundary": "pda"},
    ],
)
def test_bad_read_arguments_are_window_errors_naming_the_file(small, kwargs):
    path, _ = small
    with SlideReader(path) as reader, pytest.raises(WindowError, match=r"small\.tif: "):
        reader.read(Window(0, 0, 10, 10), **kwargs)


@pytest.mark.parametrize(
    ("window", "kwargs"),
    [
        (Window(0, 0, 10**7, 10**7), {}),
        (Window(0, 0, 40, 50), {"downsample": 1e-300}),
        (Window(0, 0, 40, 50), {"downsample": 5e-324}),
        (Window(0, 0, 40, 50), {"out_shape": (10**9, 10**9)}),
    ],
)
def test_outputs_larger_than_memory_are_refused_before_allocating(small, window, kwargs):
    path, _ = small
    with SlideReader(path) as reader, pytest.raises(WindowError, match=r"small\.tif: .* GiB"):
        reader.read(window, **kwargs)


def test_a_huge_window_with_a_small_output_is_fast_and_exact(small):
    path, rgb = small
    window = Window(-(10**7) // 2, -(10**7) // 2, 10**7, 10**7)
    start = time.perf_counter()
    with SlideReader(path) as reader:
        got = reader.read(window, out_shape=(2, 2), fill=0)
    assert time.perf_counter() - start < 5
    # the slide's 40 x 50 pixels fall in the bottom-right cell of 5e6 x 5e6 pixels
    expected = np.zeros((2, 2, 3))
    expected[1, 1] = rgb.astype(float).sum(axis=(0, 1)) / (5 * 10**6) ** 2
    np.testing.assert_array_equal(got, np.rint(expected))
    with SlideReader(path) as reader:
        got = reader.read(Window(-40, -50, 120, 150), out_shape=(3, 3), fill=10)
    np.testing.assert_array_equal(got[1, 1], np.rint(rgb.astype(float).mean(axis=(0, 1))))
    assert (got[0] == 10).all()
    assert (got[:, 2] == 10).all()


def test_properties_of_a_closed_reader_raise(small):
    path, _ = small
    reader = SlideReader(path)
    reader.close()
    for name in ["shape", "dtype", "channels", "level_count", "level_shapes", "segment_shape"]:
        with pytest.raises(SlideReadError, match=r"small\.tif: the reader is closed"):
            getattr(reader, name)
    assert "shape=(0, 0)" in repr(reader)


# -- cut and corrupted files: a right read or a typed error, never a crash or a hang -----------
def _base_files(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """Small TIFFs of several layouts, with what they must read as."""
    made = []
    for name, kwargs in [
        ("tiled-deflate", {"tile": 16, "compression": "deflate"}),
        ("striped-lzw", {"tile": None, "rows_per_strip": 5, "compression": "lzw"}),
        ("pages", {"tile": 16, "layout": "pages", "compression": "none"}),
        ("jpeg", {"tile": 16, "compression": "jpeg"}),
    ]:
        path = folder / f"{name}.tif"
        write_synthetic_slide(path, (40, 48), seed=3, **kwargs)
        with SlideReader(path) as reader:
            made.append((path, reader.read()))
    path = folder / "palette.tif"
    colormap = RNG.integers(0, 65536, (3, 16), dtype=np.uint16)
    _write_packed(path, RNG.integers(0, 16, (40, 48), dtype=np.uint8), 4, "palette",
                  extratags=[(320, "H", 48, colormap.ravel(), True)])  # fmt: skip
    with SlideReader(path) as reader:
        made.append((path, reader.read()))
    return made


def _read_in_worker(path: str, shape: tuple[int, int]) -> tuple:
    """Open and read a (possibly damaged) file; report the outcome in picklable form."""
    import logging
    import traceback

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # it logs what it skips
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with SlideReader(path, max_workers=2) as reader:
                pixels = reader.read(Window(0, 0, *shape))
                reader.read(downsample=3)
        except Exception as exc:
            kinds = (isinstance(exc, GlomsegError), isinstance(exc, OSError))
            return ("error", type(exc).__name__, *kinds, str(exc), traceback.format_exc())
    others = [f"{w.category.__name__}: {w.message}" for w in caught]
    others = [o for o in others if not o.startswith("SlideReadWarning")]
    return ("ok", pixels, others)


@pytest.fixture(scope="module")
def damage_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damage")
    files = [(path, path.read_bytes(), pixels) for path, pixels in _base_files(folder)]
    pools = [multiprocessing.get_context("spawn").Pool(1)]  # replaced after a hang
    yield folder, files, pools
    pools[0].terminate()
    pools[0].join()


@settings(
    max_examples=int(os.environ.get("GLOMSEG_DAMAGE_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_cut_or_corrupted_files_read_right_or_raise_a_slide_read_error(damage_setup, data):
    folder, files, pools = damage_setup
    index = data.draw(st.integers(0, len(files) - 1), label="file")
    path, original, pixels = files[index]
    cut = data.draw(st.booleans(), label="cut")
    # half the offsets in the first 1 KiB: the header and (tifffile writes it first) the IFD
    near = st.integers(0, min(1024, len(original)))
    where = data.draw(st.one_of(near, st.integers(0, len(original))), label="offset")
    damaged = bytearray(original[:where] if cut else original)
    if not cut:
        junk = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        damaged[where : where + len(junk)] = junk
    target = folder / f"damaged-{path.name}"
    target.write_bytes(bytes(damaged))
    job = pools[0].apply_async(_read_in_worker, (str(target), pixels.shape[:2]))
    try:
        outcome = job.get(timeout=30)
    except multiprocessing.TimeoutError:
        pools[0].terminate()
        pools[0] = multiprocessing.get_context("spawn").Pool(1)
        pytest.fail(f"reading {path.name} {'cut' if cut else 'corrupted'} at {where} hangs")
    if outcome[0] == "error":
        _, kind, is_glomseg, is_os_error, message, trace = outcome
        assert is_glomseg, f"{kind}: {message}\n{trace}"
        assert is_os_error, f"{kind}: {message}\n{trace}"
        assert str(target) in message
        return
    _, got, other_warnings = outcome
    assert not other_warnings
    assert got.shape == pixels.shape
    assert got.dtype == np.uint8
    if cut:  # a cut can only lose data: what still reads must be right
        np.testing.assert_array_equal(got, pixels)
