"""Slides through OpenSlide (the ``openslide`` extra): DICOM WSI, NDPI and SVS vs our TIFF path."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from glomseg import SlideReader, Window
from glomseg.errors import SlideReadError

openslide = pytest.importorskip("openslide", reason="needs the openslide extra")

DATA = Path(__file__).parents[1] / "data" / "openslide"


def _image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Pale glass with a few purple discs and some noise: JPEG has something to do."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    image = np.full((*shape, 3), 232, dtype=np.int16)
    for _ in range(6):
        r, c, radius = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(20, 90)
        image[(rows - r) ** 2 + (cols - c) ** 2 < radius**2] = rng.integers(80, 200, 3)
    image += rng.integers(-12, 12, image.shape).astype(np.int16)
    return image.clip(0, 255).astype(np.uint8)


def _hamamatsu_tags(lens: float) -> list[tuple[int, str, int, object, bool]]:
    """NDPI's private tags: format flag, source lens (magnification), X/Y/Z offsets."""
    return [
        (65420, "I", 1, 1, True),
        (65421, "f", 1, lens, True),
        (65422, "i", 1, 0, True),
        (65423, "i", 1, 0, True),
        (65424, "i", 1, 0, True),
    ]


@pytest.fixture(scope="module")
def ndpi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-level Hamamatsu NDPI (JPEG strips, 0.45 um/px) that OpenSlide recognises."""
    path = tmp_path_factory.mktemp("ndpi") / "slide.ndpi"
    image = _image((512, 768))
    with tifffile.TiffWriter(path) as writer:
        for k, lens in ((1, 20.0), (2, 10.0)):
            writer.write(
                image[::k, ::k],
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 95},
                subsampling=(1, 1),
                rowsperstrip=512 // k,
                resolution=(1e4 / (0.45 * k), 1e4 / (0.45 * k)),
                resolutionunit="CENTIMETER",
                extratags=_hamamatsu_tags(lens),
            )
    return path


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled, deflate-compressed, two-level Aperio SVS (0.25 um/px) with a thumbnail."""
    path = tmp_path_factory.mktemp("svs") / "slide.svs"
    image = _image((700, 900), seed=1)
    description = "Aperio Image Library v12.0.5\r\n900x700 -> 900x700 - |AppMag = 40|MPP = 0.25"
    with tifffile.TiffWriter(path) as writer:
        writer.write(
            image,
            tile=(128, 128),
            compression="zlib",
            photometric="rgb",
            description=description,
            metadata=None,
        )
        writer.write(  # an SVS's second page is its thumbnail, in strips
            image[::8, ::8],
            compression="zlib",
            photometric="rgb",
            description="Aperio Image Library v12.0.5\r\n900x700 -> 113x88",
            metadata=None,
        )
        writer.write(
            image[::4, ::4],
            tile=(128, 128),
            compression="zlib",
            photometric="rgb",
            description="Aperio Image Library v12.0.5\r\n225x175 -> 225x175",
            metadata=None,
        )
    return path


def test_dicom_wsi_reads_like_the_same_image_as_svs() -> None:
    # boxes_0.dcm (with boxes_1.dcm beside it) and small.svs hold the same 16 x 16 image.
    with SlideReader(DATA / "boxes_0.dcm") as dicom:
        assert "OpenSlide (dicom)" in dicom.layout
        assert dicom.shape == (16, 16)
        assert dicom.pixel_size_um == pytest.approx(0.499)
        assert (dicom.dtype, dicom.channels, dicom.level_count) == (np.uint8, 3, 1)
        pixels = dicom.read()
        corner = dicom.read(Window(-4, -4, 8, 8), fill=7)  # outside the slide: padded
    with SlideReader(DATA / "small.svs", backend="glomseg") as ours:
        assert "OpenSlide" not in ours.layout
        expected = ours.read()
    np.testing.assert_array_equal(pixels, expected)
    assert (corner[:4] == 7).all()
    np.testing.assert_array_equal(corner[4:, 4:], expected[:4, :4])


@pytest.mark.parametrize("downsample", [None, 2.0, 3.7])
def test_ndpi_through_openslide_equals_our_tiff_path(
    ndpi: Path, tmp_path: Path, downsample: float | None
) -> None:
    as_tiff = shutil.copyfile(ndpi, tmp_path / "same-bytes.tif")
    window = Window(37, 51, 300, 410)
    with SlideReader(ndpi) as theirs, SlideReader(as_tiff, backend="glomseg") as ours:
        assert "OpenSlide (hamamatsu)" in theirs.layout
        assert theirs.pixel_size_um == pytest.approx(0.45)
        assert theirs.shape == ours.shape == (512, 768)
        got = theirs.read(window, downsample=downsample)
        want = ours.read(window, downsample=downsample)
    # Below 4 both read the file's own levels (OpenSlide adds NDPI levels at 1/4, 1/8, ...
    # that libjpeg scales while decoding, which no TIFF reader sees).
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("downsample", [None, 1.5, 4.0, 6.0])
def test_svs_through_openslide_equals_our_tiff_path(svs: Path, downsample: float | None) -> None:
    window = Window(10, 700, 500, 600)  # partly outside: padded alike
    with SlideReader(svs) as ours, SlideReader(svs, backend="openslide") as theirs:
        assert "OpenSlide" not in ours.layout  # a TIFF keeps our reader by default
        assert "OpenSlide (aperio)" in theirs.layout
        assert theirs.level_downsamples == ours.level_downsamples == (1.0, 4.0)
        assert theirs.pixel_size_um == ours.pixel_size_um == pytest.approx(0.25)
        assert theirs.segment_shape == ours.segment_shape == (128, 128)
        np.testing.assert_array_equal(
            theirs.read(window, downsample=downsample), ours.read(window, downsample=downsample)
        )


def test_an_openslide_reader_pickles_and_closes(ndpi: Path) -> None:
    reader = SlideReader(ndpi)
    copy = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(
        copy.read(Window(0, 0, 40, 40)), reader.read(Window(0, 0, 40, 40))
    )
    reader.close()
    assert reader.closed
    with pytest.raises(SlideReadError, match="closed"):
        reader.read(Window(0, 0, 4, 4))
    copy.close()


def test_errors_name_the_file_and_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.mrxs"
    junk.write_text("[GENERAL]\nnot a slide\n")
    with pytest.raises(SlideReadError, match=r"junk\.mrxs: not a readable TIFF"):
        SlideReader(junk)
    with pytest.raises(SlideReadError, match=r"junk\.mrxs: not a slide format OpenSlide reads"):
        SlideReader(junk, backend="openslide")
    with pytest.raises(ValueError, match="backend"):
        SlideReader(DATA / "small.svs", backend="vips")  # type: ignore[arg-type]
    from glomseg.io import _openslide

    monkeypatch.setattr(_openslide, "_module", lambda: None)  # as without the extra
    with pytest.raises(SlideReadError, match=r"boxes_0\.dcm: .*pip install 'glomseg\[openslide\]'"):
        SlideReader(DATA / "boxes_0.dcm")
    with pytest.raises(SlideReadError, match=r"small\.svs: .*pip install 'glomseg\[openslide\]'"):
        SlideReader(DATA / "small.svs", backend="openslide")


def test_predict_slide_reads_an_ndpi_slide_through_openslide(tmp_path: Path, ndpi: Path) -> None:
    from glomseg import PredictConfig, predict_slide

    def purple(batch: np.ndarray) -> np.ndarray:
        return (batch[..., 1] < 150).astype(np.float32)

    config = PredictConfig(tile_size=64, downsample=2, chunk_size=128)
    theirs = predict_slide(ndpi, purple, config=config, progress=False)
    as_tiff = shutil.copyfile(ndpi, tmp_path / "same-bytes.tif")
    ours = predict_slide(as_tiff, purple, config=config, progress=False)
    assert theirs.count_nonzero() > 0
    np.testing.assert_array_equal(theirs.to_numpy(), ours.to_numpy())
