"""Masks as pyramidal OME-TIFF: levels, OME-XML and memory."""

from __future__ import annotations

import math
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from glomseg import PredictConfig, SlideMask, predict_slide
from glomseg.distributed import predict_slides
from glomseg.io.synthetic import write_synthetic_slide
from glomseg.predict._ome import pyramid_shapes

OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def _blobs(shape: tuple[int, int], seed: int = 0, count: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        r, c, radius = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(1, 30)
        mask |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    return mask


def _any_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """The reference reduction: a level pixel is set when any mask pixel of its block is."""
    h, w = (math.ceil(n / factor) for n in mask.shape)
    out = np.zeros((h, w), dtype=bool)
    for r in range(h):
        for c in range(w):
            out[r, c] = mask[r * factor : (r + 1) * factor, c * factor : (c + 1) * factor].any()
    return out


def _pixels(path: Path) -> ET.Element:
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    assert xml is not None
    pixels = ET.fromstring(xml).find(f"{OME}Image/{OME}Pixels")
    assert pixels is not None
    return pixels


def test_levels_tiles_and_physical_size(tmp_path: Path) -> None:
    mask = _blobs((700, 1000))
    store = SlideMask.from_array(mask, tmp_path / "m.zarr", chunk_size=128)
    path = store.to_ome_tiff(tmp_path / "m.ome.tif", tile=128, pixel_size_um=0.4988)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        shapes = [level.shape for level in series.levels]
        assert shapes == pyramid_shapes((700, 1000), 128)
        assert shapes == [(700, 1000), (350, 500), (175, 250), (88, 125)]
        for k, level in enumerate(series.levels):
            page = level.pages[0]
            assert page.is_tiled
            assert (page.tilelength, page.tilewidth) == (128, 128)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            data = level.asarray()
            assert data.dtype == np.uint8
            assert set(np.unique(data)) <= {0, 255}
            np.testing.assert_array_equal(data > 0, _any_downsample(mask, 2**k), err_msg=str(k))
    pixels = _pixels(path)
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.4988)
    assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.4988)
    assert pixels.get("PhysicalSizeXUnit") == "µm"
    assert (pixels.get("SizeX"), pixels.get("SizeY"), pixels.get("Type")) == (
        "1000",
        "700",
        "uint8",
    )


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    tile=st.sampled_from([16, 32, 64]),
    seed=st.integers(0, 100),
)
def test_every_level_is_the_any_reduction(
    tmp_path_factory: pytest.TempPathFactory, h: int, w: int, tile: int, seed: int
) -> None:
    folder = tmp_path_factory.mktemp("ome")
    mask = np.random.default_rng(seed).random((h, w)) < 0.02
    store = SlideMask.from_array(mask, folder / "m.zarr", chunk_size=48)
    path = store.to_ome_tiff(folder / "m.ome.tif", tile=tile)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) == len(pyramid_shapes((h, w), tile))
        assert max(levels[-1].shape) <= tile
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray() > 0, _any_downsample(mask, 2**k))


def test_without_pyramid_or_pixel_size(tmp_path: Path) -> None:
    store = SlideMask.from_array(_blobs((300, 200)), tmp_path / "m.zarr")
    path = store.to_ome_tiff(tmp_path / "flat.ome.tif", pyramid=False, tile=64)
    with tifffile.TiffFile(path) as tif:
        assert [level.shape for level in tif.series[0].levels] == [(300, 200)]
    assert _pixels(path).get("PhysicalSizeX") is None
    with pytest.raises(ValueError, match="multiple of 16"):
        store.to_ome_tiff(tmp_path / "x.ome.tif", tile=100)
    with pytest.raises(ValueError, match="pixel_size_um must be a number > 0"):
        store.to_ome_tiff(tmp_path / "x.ome.tif", pixel_size_um=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.ome.tif", "m.zarr"]


def _peak_bytes(store: SlideMask, path: Path) -> int:
    tracemalloc.start()
    try:
        store.to_ome_tiff(path, tile=256)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_at_a_band_of_rows(tmp_path: Path) -> None:
    peaks = {}
    for height in (2048, 8192):
        mask = np.zeros((height, 4096), dtype=bool)
        mask[100 : height - 100 : 7, 50:4000:5] = True
        store = SlideMask.from_array(mask, tmp_path / f"{height}.zarr", chunk_size=512)
        del mask
        peaks[height] = _peak_bytes(store, tmp_path / f"{height}.ome.tif")
    # four times the rows, the same memory: a band of rows, not the mask
    assert peaks[8192] < 1.25 * peaks[2048], peaks
    assert peaks[8192] < 8192 * 4096 / 4, peaks


def test_predict_slide_and_predict_slides_write_it_with_the_slide_pixel_size(
    tmp_path: Path,
) -> None:
    slide = write_synthetic_slide(tmp_path / "s.tif", (300, 420), tile=64, seed=3)
    config = PredictConfig(tile_size=64, downsample=2, chunk_size=128)

    def purple(batch: np.ndarray) -> np.ndarray:
        return (batch[..., 1] < 150).astype(np.float32)

    mask = predict_slide(slide.path, purple, config=config, pixel_size_um=0.25, progress=False)
    path = mask.to_ome_tiff(tmp_path / "s.ome.tif", tile=64)
    assert float(_pixels(path).get("PhysicalSizeX")) == pytest.approx(0.25)
    np.testing.assert_array_equal(tifffile.imread(path) > 0, mask.to_numpy())

    report = predict_slides(
        [slide.path],
        _purple_factory,
        tmp_path / "out",
        config=config,
        progress=False,
        pixel_size_um=0.25,
    )
    assert not (tmp_path / "out" / "s.ome.tif").exists()
    with pytest.raises(ValueError, match="another model, other settings"):  # never mixes two runs
        predict_slides(
            [slide.path], _purple_factory, tmp_path / "out", config=config, ome_tiff=True
        )
    report = predict_slides(
        [slide.path],
        _purple_factory,
        tmp_path / "out",
        config=config,
        progress=False,
        ome_tiff=True,
        pixel_size_um=0.25,
    )
    assert list(report.done) == ["s"]  # redone: the earlier run left no OME-TIFF
    written = tmp_path / "out" / "s.ome.tif"
    np.testing.assert_array_equal(tifffile.imread(written) > 0, mask.to_numpy())
    again = predict_slides(
        [slide.path],
        _purple_factory,
        tmp_path / "out",
        config=config,
        progress=False,
        ome_tiff=True,
        pixel_size_um=0.25,
    )
    assert list(again.skipped) == ["s"]


def _purple_factory():  # type: ignore[no-untyped-def]
    return lambda batch: (batch[..., 1] < 150).astype(np.float32)
