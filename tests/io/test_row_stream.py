"""Tests of the parallel reader of predict_slide (glomseg.io._row_stream)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from glomseg import PredictConfig, SlideReader, predict_slide
from glomseg.errors import SlideReadError
from glomseg.io import tissue_pixels
from glomseg.io._row_stream import RowStream
from glomseg.io.synthetic import write_synthetic_slide
from glomseg.predict._scale import _to_prediction_grid
from glomseg.predict._stitch import prediction_shape

#: Layouts the stream must read alike: tiles, strips, planar tiles, and a pyramid.
LAYOUTS = {
    "tiled": {"tile": 32},
    "jpeg": {"tile": 48, "compression": "jpeg"},
    "strips": {"tile": None, "rows_per_strip": 7},
    "planar": {"tile": 32, "layout": "planar"},
    "pyramid": {"tile": 32, "levels": 3},
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    made = {}
    for i, (name, options) in enumerate(LAYOUTS.items()):
        path = folder / f"{name}.tif"
        write_synthetic_slide(path, (150 + 13 * i, 211 - 9 * i), seed=i, **options)
        made[name] = path
    return made


def _reference(path, downsample):
    """The whole slide read at once, resampled by predict_image's reference rule."""
    with SlideReader(path) as reader:
        return _to_prediction_grid(reader.read(), downsample)


@settings(max_examples=40)
@given(
    name=st.sampled_from(["tiled", "jpeg", "strips", "planar"]),
    downsample=st.sampled_from([1, 2, 3, 0.75, 1.5, 2.5]),
    workers=st.integers(1, 4),
    piece_bytes=st.sampled_from([1, 3_000, 20_000, 10**9]),
    cuts=st.lists(st.integers(1, 60), min_size=1, max_size=8),
)
def test_rows_equal_the_whole_slide_resampled_whatever_the_pieces(
    slides, name, downsample, workers, piece_bytes, cuts
):
    expected = _reference(slides[name], downsample)
    with SlideReader(slides[name], max_workers=1, cache_bytes=0) as reader:
        shape = prediction_shape(reader.shape, downsample)
        assert expected.shape[:2] == shape
        out = np.zeros((*shape, 3), np.uint8)
        tissue = np.zeros(shape, bool)
        with RowStream(
            reader,
            shape,
            downsample,
            workers=workers,
            saturation_threshold=40,
            piece_bytes=piece_bytes,
        ) as stream:
            row, k = 0, 0
            while row < shape[0]:  # ask in uneven slices, as the band does
                stop = min(shape[0], row + cuts[k % len(cuts)])
                stream.take(row, stop, out[row:stop], tissue[row:stop])
                row, k = stop, k + 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(tissue, tissue_pixels(expected, saturation_threshold=40))


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("downsample", [1, 2, 4, 2.5])
def test_predict_slide_mask_does_not_depend_on_workers(slides, tmp_path, name, downsample):
    def rule(batch):
        return (batch[..., 1] < 150).astype(np.float32)

    masks = []
    for workers in (1, 3):
        config = PredictConfig(tile_size=32, downsample=downsample, workers=workers)
        mask = predict_slide(
            slides[name], rule, tmp_path / f"{workers}.zarr", config=config, progress=False
        )
        masks.append(mask.to_numpy())
        assert mask.attributes["config"]["workers"] == workers
    np.testing.assert_array_equal(masks[0], masks[1])
    assert masks[0].any()


def test_a_worker_error_reaches_the_caller(slides, tmp_path):
    broken = tmp_path / "cut.tif"
    data = slides["jpeg"].read_bytes()
    with tifffile.TiffFile(slides["jpeg"]) as tif:
        page = tif.pages[0]
        offset = page.dataoffsets[len(page.dataoffsets) // 2]
    broken.write_bytes(data[:offset] + b"\x00" * (len(data) - offset))  # JPEG data zeroed
    config = PredictConfig(tile_size=32, downsample=1, workers=2, skip_background=False)
    with pytest.raises(SlideReadError, match=r"cut\.tif"):
        predict_slide(
            broken, lambda b: np.zeros(b.shape[:3], np.float32), config=config, progress=False
        )


def test_workers_is_validated():
    with pytest.raises(ValueError, match="workers"):
        PredictConfig(workers=0)


@settings(max_examples=40)
@given(
    tile=st.sampled_from([8, 16, 24]),
    stride_share=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    width=st.integers(20, 120),
    stripes=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    blending=st.sampled_from(["gaussian", "mean", "crop"]),
)
def test_striped_blending_adds_the_same_bits_as_one_tile_after_another(
    tile, stride_share, width, stripes, seed, blending
):
    from concurrent.futures import ThreadPoolExecutor

    from glomseg.predict import BandStitcher

    width = max(width, tile)
    stride = max(1, int(tile * stride_share))
    shape = (tile * 3, width)
    rng = np.random.default_rng(seed)
    serial = BandStitcher(shape, tile, stride, blending=blending)
    striped = BandStitcher(shape, tile, stride, blending=blending)
    outputs = {"serial": [], "striped": []}
    with ThreadPoolExecutor(stripes) as pool:
        for i in range(len(serial.row_origins)):
            for name, stitcher in (("serial", serial), ("striped", striped)):
                outputs[name].append(stitcher.start_row(i))
            tiles = [
                (j, rng.random((tile, tile)).astype(np.float32))
                for j in range(len(serial.col_origins))
            ]
            for j, probs in tiles:
                serial.add(i, j, probs)
            striped.add_tiles(i, tiles, pool, stripes)
    outputs["serial"].append(serial.finish())
    outputs["striped"].append(striped.finish())
    for (start_a, a), (start_b, b) in zip(outputs["serial"], outputs["striped"], strict=True):
        assert start_a == start_b
        np.testing.assert_array_equal(a, b)  # bit for bit, not approximately
