"""Tests of physical scale in prediction (glomseg.predict._scale) and fractional downsampling."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import uniform_filter

from glomseg import SlideReader, Window
from glomseg.predict._predict import predict_slide
from glomseg.predict._predict_config import PredictConfig
from glomseg.predict._scale import _centres, _edges, predict_image, resolve_scale
from glomseg.predict._stitch import grid_origins, prediction_shape, sliding_window_predict

BLENDINGS = ("gaussian", "mean", "crop")
EDGES = ("shift", "pad")


# -- fakes ------------------------------------------------------------------------------------
def red(batch: np.ndarray) -> np.ndarray:
    """Identity-like predictor: the red channel as probability."""
    return batch[..., 0] / np.float32(255)


def purple(batch: np.ndarray) -> np.ndarray:
    """A deterministic colour rule that looks at neighbours (not per pixel)."""
    hit = (batch[..., 1] < 140).astype(np.float32)
    return np.clip(uniform_filter(hit, size=(1, 3, 3), mode="mirror") * 1.2, 0, 1)


class FakeModel:
    """A predictor with a ``config`` and an optional ``stain_normalizer``, like GlomUNet."""

    def __init__(
        self,
        rule: Any = purple,
        *,
        input_size: int = 16,
        pixel_size_um: float | None = 1.0,
        downsample: float = 2.0,
        stain_normalizer: Any = None,
    ) -> None:
        self.rule = rule
        self.config = SimpleNamespace(
            input_size=input_size, pixel_size_um=pixel_size_um, downsample=downsample
        )
        self.stain_normalizer = stain_normalizer
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8
        assert batch.ndim == 4
        self.calls += 1
        return self.rule(batch)


class Invert:
    """A fake stain normaliser: inverts the colours, and counts the tiles it sees."""

    def __init__(self) -> None:
        self.seen = 0

    def transform(self, image: np.ndarray) -> np.ndarray:
        assert image.dtype == np.uint8
        assert image.ndim == 3
        self.seen += 1
        return 255 - image

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "invert", "target": np.array([1.5, 2.0])}


def image_of(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Glass with purple blobs and noise: tissue, background and edges for the colour rule."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), 235, dtype=np.uint8)
    for _ in range(4):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        size = rng.integers(3, 15)
        image[r : r + size, c : c + size] = rng.integers(40, 200, 3)
    noise = rng.integers(-20, 21, image.shape)
    return np.clip(image.astype(int) + noise * (rng.random(shape)[..., None] < 0.3), 0, 255).astype(
        np.uint8
    )


def write_tiff(path: Path, image: np.ndarray, pixel_size_um: float | None = None) -> Path:
    if pixel_size_um is None:
        tifffile.imwrite(path, image, tile=(16, 16), photometric="rgb")
    else:
        per_cm = 1e4 / pixel_size_um
        tifffile.imwrite(
            path,
            image,
            tile=(16, 16),
            photometric="rgb",
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
        )
    return path


# -- resolve_scale ------------------------------------------------------------------------------
def test_scale_from_pixel_sizes_snaps_whole_ratios():
    model = FakeModel(pixel_size_um=1.96, input_size=64)
    assert resolve_scale(model, 0.49) == (64, 4)
    assert type(resolve_scale(model, 0.49)[1]) is int
    assert resolve_scale(model, 0.98) == (64, 2)
    tile, ds = resolve_scale(model, 0.5)
    assert tile == 64
    assert ds == pytest.approx(3.92)
    assert resolve_scale(model, 3.92) == (64, 0.5)  # a coarser input is upsampled


def test_scale_fallbacks_and_the_config_winning():
    model = FakeModel(pixel_size_um=1.0, downsample=3.0, input_size=32)
    assert resolve_scale(model) == (32, 3)  # input pixel size unknown
    assert resolve_scale(FakeModel(pixel_size_um=None, downsample=2.5), 0.5) == (16, 2.5)
    assert resolve_scale(red) == (512, 2)  # a plain function: today's defaults
    assert resolve_scale(red, 0.5) == (512, 2)
    config = PredictConfig(tile_size=48, downsample=1.5)
    assert resolve_scale(model, 0.25, config=config) == (48, 1.5)
    assert resolve_scale(model, 0.25, config=PredictConfig(downsample=1)) == (32, 1)
    assert resolve_scale(model, 0.25, config=PredictConfig(tile_size=40)) == (40, 4)


def test_scale_choice_is_logged_with_its_reason(caplog):
    with caplog.at_level(logging.INFO, logger="glomseg.predict._scale"):
        resolve_scale(FakeModel(pixel_size_um=2.0), 0.5)
        resolve_scale(FakeModel(pixel_size_um=2.0))
    assert "downsample 4 (model pixel size 2 um / input pixel size 0.5 um)" in caplog.text
    assert "the input's pixel size is unknown" in caplog.text


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1.0, ValueError, "pixel_size_um must be a finite number > 0, got -1.0"),
        (0, ValueError, "pixel_size_um must be a finite number > 0, got 0"),
        (float("nan"), ValueError, "pixel_size_um must be a finite number > 0, got nan"),
        (float("inf"), ValueError, "pixel_size_um must be a finite number > 0, got inf"),
        ("0.5", TypeError, "pixel_size_um must be a number of micrometres per pixel"),
        (True, TypeError, "pixel_size_um must be a number"),
    ],
)
def test_bad_pixel_sizes_name_the_parameter(tmp_path, value, error, message):
    with pytest.raises(error, match=message):
        resolve_scale(FakeModel(), value)
    with pytest.raises(error, match=message):
        predict_image(np.zeros((8, 8, 3), np.uint8), FakeModel(), pixel_size_um=value)
    path = write_tiff(tmp_path / "s.tif", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(error, match=message):
        predict_slide(path, FakeModel(), tmp_path / "m.zarr", pixel_size_um=value, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_a_bad_model_pixel_size_is_named():
    with pytest.raises(ValueError, match=r"model.config.pixel_size_um must be .* got -2"):
        resolve_scale(FakeModel(pixel_size_um=-2), 0.5)


# -- predict_image ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8), np.uint8), r"image must be uint8 of shape \(H, W, 3\), got uint8 of"),
        (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.float32), "got float32"),
        (np.zeros((0, 8, 3), np.uint8), r"shape \(0, 8, 3\)"),
    ],
)
def test_predict_image_checks_the_image(image, message):
    with pytest.raises(ValueError, match=message):
        predict_image(image, FakeModel())


@st.composite
def scale_cases(draw):
    shape = (draw(st.integers(1, 60)), draw(st.integers(1, 60)))
    # model pixel size / input pixel size: whole, fractional and below-1 downsamples
    input_px = draw(st.sampled_from([0.5, 1 / 3, 0.4, 0.8, 0.25, 1.25, 2.0]))
    metadata = draw(st.booleans())
    explicit = draw(st.sampled_from([None, 1, 2, 1.5, 2.75, 0.6]))
    config = PredictConfig(
        tile_size=draw(st.sampled_from([None, 8, 12])),
        downsample=explicit,
        edge=draw(st.sampled_from(EDGES)),
        blending=draw(st.sampled_from(BLENDINGS)),
        tta=draw(st.booleans()),
        batch_size=draw(st.integers(1, 5)),
        skip_background=draw(st.booleans()),
        dark_threshold=draw(st.sampled_from([None, 215, 225])),
        min_confidence=draw(st.sampled_from([None, 0.0, 0.7, 0.9])),
        chunk_size=16,
    )
    return image_of(shape, draw(st.integers(0, 2**16))), input_px, metadata, config


@given(case=scale_cases())
@settings(max_examples=60, deadline=None)
def test_predict_image_equals_predict_slide(tmp_path_factory, case):
    image, input_px, metadata, config = case
    tmp = tmp_path_factory.mktemp("same")
    path = write_tiff(tmp / "s.tif", image, input_px if metadata else None)
    model = FakeModel(pixel_size_um=1.0, downsample=2.5)
    model.config.min_confidence = 0.8  # used where the config leaves it None
    slide = predict_slide(path, model, tmp / "m.zarr", config=config, progress=False)
    with SlideReader(path) as reader:
        known = reader.pixel_size_um  # as the file stores it
    assert (known is not None) == metadata
    mask = predict_image(image, model, pixel_size_um=known, config=config)
    assert mask.dtype == np.bool_
    assert mask.shape == image.shape[:2]
    np.testing.assert_array_equal(mask, slide.read())
    expected = config.downsample or (2.5 if known is None else 1.0 / known)
    assert slide.attributes["downsample"] == pytest.approx(expected)


def everywhere(batch: np.ndarray) -> np.ndarray:
    """A model that sees a glomerulus in every tile it is given."""
    return np.ones(batch.shape[:3], dtype=np.float32)


@pytest.mark.parametrize(
    "colour", [(150, 150, 150), (236, 205, 230)], ids=["greyscale", "pale pink PAS"]
)
def test_grey_and_pale_tissue_is_predicted_glass_and_padding_are_not(colour):
    image = np.full((64, 64, 3), 245, dtype=np.uint8)  # glass
    image[:32, :32] = colour  # tissue with little or no colour: HSV saturation below 40
    image[32:, 32:] = 0  # black padding
    model = FakeModel(everywhere, input_size=16, pixel_size_um=1.0, downsample=1)
    mask = predict_image(image, model, pixel_size_um=1.0)
    assert mask[:32, :32].all()  # the tissue's tiles were predicted
    assert not mask[48:].any()
    assert not mask[:, 48:].any()  # tiles of glass and padding alone were not
    only_colour = PredictConfig(dark_threshold=None)
    assert not predict_image(image, model, pixel_size_um=1.0, config=only_colour).any()


def test_an_image_without_tissue_stays_empty():
    model = FakeModel(everywhere, input_size=16, pixel_size_um=1.0, downsample=1)
    glass = np.full((40, 50, 3), 240, dtype=np.uint8)
    glass[:, :10] = 0  # and black padding
    glass[5, 20] = (243, 238, 245)  # a faint speck of colour on the glass
    assert not predict_image(glass, model, pixel_size_um=1.0).any()
    assert model.calls == 0
    with pytest.raises(ValueError, match=r"dark_threshold must be in \[0, 255\], got 300"):
        PredictConfig(dark_threshold=300)


def test_predict_image_defaults_and_its_example():
    image = image_of((40, 50), 1)
    model = FakeModel(pixel_size_um=1.0)
    with_tta = predict_image(image, model, pixel_size_um=0.4)
    config = PredictConfig(tta=True, threshold=0.5)
    assert (predict_image(image, model, pixel_size_um=0.4, config=config) == with_tta).all()
    plain = predict_image(image, model, pixel_size_um=0.4, config=PredictConfig())
    assert plain.shape == (40, 50)


# -- fractional downsample: properties ------------------------------------------------------------
def _resampled_red(path: Path, ds: float) -> np.ndarray:
    """The red channel on the prediction grid, mapped back by the pixel-centre rule."""
    with SlideReader(path) as reader:
        h, w = reader.shape
        ph, pw = prediction_shape((h, w), ds)
        low = reader._read_area(_edges(0, ph, ds), _edges(0, pw, ds))[..., 0]
    return low[_centres(0, h, ds, ph)][:, _centres(0, w, ds, pw)]


@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    ds=st.sampled_from([1.5, 2.5, 0.75, 1.25, 3.2, 0.4]),
    tile=st.sampled_from([8, 16]),
    level=st.integers(0, 254),
    blending=st.sampled_from(BLENDINGS),
)
@settings(max_examples=40, deadline=None)
def test_identity_predictor_at_a_fractional_downsample(
    tmp_path_factory, seed, shape, ds, tile, level, blending
):
    tmp = tmp_path_factory.mktemp("frac")
    image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = write_tiff(tmp / "s.tif", image)
    config = PredictConfig(
        tile_size=tile,
        downsample=ds,
        blending=blending,
        threshold=(level + 0.5) / 255,
        skip_background=False,
        chunk_size=16,
    )
    mask = predict_slide(path, red, tmp / "m.zarr", config=config, progress=False)
    np.testing.assert_array_equal(mask.read(), _resampled_red(path, ds) > level)


@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    k=st.integers(2, 4),
    level=st.integers(0, 254),
)
@settings(max_examples=25, deadline=None)
def test_upsampling_by_one_over_k_reproduces_the_slide(tmp_path_factory, seed, shape, k, level):
    tmp = tmp_path_factory.mktemp("up")
    image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = write_tiff(tmp / "s.tif", image)
    config = PredictConfig(
        tile_size=16, downsample=1 / k, threshold=(level + 0.5) / 255, skip_background=False
    )
    mask = predict_slide(path, red, tmp / "m.zarr", config=config, progress=False)
    np.testing.assert_array_equal(mask.read(), image[..., 0] > level)
    assert (predict_image(image, red, config=config) == mask.read()).all()


@pytest.mark.parametrize("ds", [1, 2, 3])
def test_whole_float_downsamples_are_todays_integer_path(tmp_path, ds):
    image = image_of((45, 61), 2)
    path = write_tiff(tmp_path / "s.tif", image)
    as_int = PredictConfig(tile_size=8, stride=6, downsample=ds, skip_background=False)
    as_float = PredictConfig(tile_size=8, stride=6, downsample=float(ds), skip_background=False)
    assert type(as_float.downsample) is int
    a = predict_slide(path, purple, tmp_path / "a.zarr", config=as_int, progress=False)
    b = predict_slide(path, purple, tmp_path / "b.zarr", config=as_float, progress=False)
    np.testing.assert_array_equal(a.read(), b.read())
    # today's rule: a block mean, thresholded, repeated in blocks
    with SlideReader(path) as reader:
        h, w = -(-45 // ds), -(-61 // ds)
        low = reader.read(Window(0, 0, h * ds, w * ds), out_shape=(h, w))
    probs = sliding_window_predict(low, purple, tile_size=8, stride=6)
    expected = np.repeat(np.repeat(probs > 0.5, ds, axis=0), ds, axis=1)[:45, :61]
    np.testing.assert_array_equal(a.read(), expected)


# -- scale from the model and the file, stain, attributes ----------------------------------------
def test_predict_slide_takes_tile_size_and_downsample_from_model_and_file(tmp_path):
    image = image_of((60, 70), 3)
    path = write_tiff(tmp_path / "s.tif", image, pixel_size_um=0.4)
    model = FakeModel(pixel_size_um=1.0, input_size=16)
    mask = predict_slide(path, model, tmp_path / "m.zarr", progress=False)
    attributes = mask.attributes
    assert attributes["downsample"] == 2.5
    assert attributes["pixel_size_um"] == pytest.approx(0.4)
    assert attributes["config"]["tile_size"] == 16
    assert attributes["config"]["stride"] == 12
    assert attributes["config"]["downsample"] == 2.5
    # an explicit pixel size beats the file's; an explicit downsample beats both
    again = predict_slide(path, model, tmp_path / "n.zarr", pixel_size_um=0.5, progress=False)
    assert again.attributes["downsample"] == 2
    fixed = predict_slide(
        path, model, tmp_path / "o.zarr", config=PredictConfig(downsample=3), progress=False
    )
    assert fixed.attributes["downsample"] == 3


def test_stain_normaliser_is_applied_to_each_predicted_tile(tmp_path):
    image = image_of((40, 40), 4)
    path = write_tiff(tmp_path / "s.tif", image)
    config = PredictConfig(downsample=1, skip_background=False, threshold=127.5 / 255)
    normaliser = Invert()
    model = FakeModel(red, stain_normalizer=normaliser)
    inverted = predict_slide(path, model, tmp_path / "a.zarr", config=config, progress=False)
    np.testing.assert_array_equal(inverted.read(), image[..., 0] < 128)
    assert normaliser.seen == inverted.stats.predicted > 0
    off = predict_slide(
        path, model, tmp_path / "b.zarr", config=config, stain=False, progress=False
    )
    np.testing.assert_array_equal(off.read(), image[..., 0] > 127)
    # the same in memory
    assert (predict_image(image, model, config=config) == inverted.read()).all()
    assert (predict_image(image, model, config=config, stain=False) == off.read()).all()
    # an override replaces the model's normaliser
    other = Invert()
    predict_slide(
        path,
        FakeModel(red),
        tmp_path / "c.zarr",
        config=config,
        stain_normalizer=other,
        progress=False,
    )
    assert other.seen > 0


def test_bad_stain_normalisers_are_reported(tmp_path):
    path = write_tiff(tmp_path / "s.tif", image_of((20, 20), 5))
    config = PredictConfig(tile_size=16, downsample=1, skip_background=False)
    with pytest.raises(TypeError, match=r"model\.stain_normalizer must have a transform"):
        predict_slide(path, FakeModel(stain_normalizer=object()), config=config, progress=False)

    class Wrong:
        def transform(self, image: np.ndarray) -> np.ndarray:
            return image.astype(np.float32)

    with pytest.raises(ValueError, match="transform must return uint8"):
        predict_slide(path, FakeModel(stain_normalizer=Wrong()), config=config, progress=False)
    with pytest.raises(TypeError, match="stain must be a bool"):
        predict_slide(path, FakeModel(), config=config, stain=1, progress=False)  # type: ignore[arg-type]


def test_one_default_stride_for_both_entry_points():
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return red(batch)

    image = np.zeros((70, 70, 3), np.uint8)
    sliding_window_predict(image, counting, tile_size=16, batch_size=1)
    assert PredictConfig(tile_size=16).stride == 12
    assert len(calls) == len(grid_origins(70, 16, 12, "shift")) ** 2 == 36  # not 64 at stride 8


@settings(max_examples=60)
@given(
    factor=st.integers(1, 17),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    extra=st.tuples(st.integers(0, 16), st.integers(0, 16)),
    seed=st.integers(0, 2**16),
    levels=st.sampled_from([(0, 256), (0, 2), (254, 256), (100, 102)]),
)
def test_block_mean_is_the_rounded_area_average(factor, rows, cols, extra, seed, levels):
    """Exact, ties to even, whatever the factor; a ragged edge beyond whole blocks is ignored."""
    from glomseg.predict._scale import _block_mean

    shape = (rows * factor + extra[0] % factor, cols * factor + extra[1] % factor, 3)
    image = np.random.default_rng(seed).integers(*levels, shape, dtype=np.uint8)
    blocks = image[: rows * factor, : cols * factor].astype(np.float64)
    expected = np.rint(blocks.reshape(rows, factor, cols, factor, 3).mean(axis=(1, 3)))
    np.testing.assert_array_equal(_block_mean(image, factor), expected.astype(np.uint8))
