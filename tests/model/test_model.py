"""Tests of glomseg.model._model: tile datasets, splits, TF Dice, and GlomUNet (tiny, CPU)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from glomseg.errors import DatasetError, GlomsegError
from glomseg.evaluate._metrics import dice_coefficient, soft_dice
from glomseg.model._datasets import make_datasets, split_tiles
from glomseg.model._losses import bce_dice_loss, dice_loss, dice_metric
from glomseg.model._model import GlomUNet, ModelConfig, PretrainedWeightsError
from glomseg.model._tf import import_tf as _import_tf
from glomseg.tiles import MANIFEST_COLUMNS, tile_name

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")

SIZE = 64
BACKBONE = "resnet18"


# --------------------------------------------------------------------------- fixtures


def synthetic_tile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark noise with 0-2 bright disks ("glomeruli"); the mask is the disks."""
    rr, cc = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(0, 3)):
        r, c = rng.integers(size // 6, size - size // 6, 2)
        radius = rng.integers(size // 10, size // 5)
        mask[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 1
    image = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
    image[mask == 1] += 120
    return image, mask


def write_tile_dataset(
    root: Path,
    *,
    slides: int = 3,
    tiles_per_slide: int = 4,
    size: int = SIZE,
    manifest: bool = True,
    dropped: int = 0,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """Write the tile exporter's format; return the kept tiles' (image, mask, slide)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    records, rows = [], []
    for s in range(slides):
        slide = f"slide-{s}"
        for t in range(tiles_per_slide + dropped):
            grid_row, grid_col = divmod(t, 4)
            kept = t < tiles_per_slide
            image, mask = synthetic_tile(rng, size)
            name = tile_name(slide, grid_row, grid_col)
            image_rel, mask_rel = (f"images/{name}.png", f"masks/{name}.png") if kept else ("", "")
            if kept:
                Image.fromarray(image).save(root / image_rel)
                Image.fromarray(mask, mode="L").save(root / mask_rel)
                records.append((str(root / image_rel), str(root / mask_rel), slide))
            rows.append(
                {
                    "slide": slide,
                    "grid_row": grid_row,
                    "grid_col": grid_col,
                    "row": grid_row * size * 2,
                    "col": grid_col * size * 2,
                    "height": size * 2,
                    "width": size * 2,
                    "out_height": size,
                    "out_width": size,
                    "downsample": 2,
                    "coverage": f"{mask.mean():.4f}",
                    "tissue": "1.0",
                    "kept": "1" if kept else "0",
                    "reason": "" if kept else "coverage",
                    "image": image_rel,
                    "mask": mask_rel,
                }
            )
    if manifest:
        with (root / "manifest.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return records


def first_batch(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    images, masks = next(iter(dataset))  # type: ignore[call-overload]
    return images.numpy(), masks.numpy()


@pytest.fixture(scope="module")
def small_model() -> GlomUNet:
    if not HAS_TF:
        pytest.skip("needs the tf extra")
    return GlomUNet(backbone=BACKBONE, input_size=SIZE, seed=0)


@pytest.fixture
def tiles(tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.stack([synthetic_tile(rng, SIZE)[0] for _ in range(3)])


# --------------------------------------------------------------------------- splits


def _records(counts: list[int]) -> list[tuple[str, str, str]]:
    return [
        (f"s{s}_{i}.png", f"s{s}_{i}_m.png", f"s{s}")
        for s, n in enumerate(counts)
        for i in range(n)
    ]


@given(
    counts=st.lists(st.integers(1, 6), min_size=2, max_size=8),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
def test_slide_split_keeps_every_slide_on_one_side(
    counts: list[int], fraction: float, seed: int
) -> None:
    records = _records(counts)
    train, val = split_tiles(records, validation_fraction=fraction, seed=seed)
    assert train
    assert val
    assert sorted(train + val) == sorted(records)
    assert not {r[2] for r in train} & {r[2] for r in val}


def test_slide_split_reaches_the_fraction_and_is_seeded() -> None:
    records = _records([5] * 10)
    train, val = split_tiles(records, validation_fraction=0.3, seed=3)
    assert len(val) == 15
    assert split_tiles(records, validation_fraction=0.3, seed=3) == (train, val)
    assert split_tiles(records, validation_fraction=0.3, seed=4) != (train, val)


def test_tile_split_mixes_slides() -> None:
    records = _records([10])
    train, val = split_tiles(records, split="tile", validation_fraction=0.2, seed=0)
    assert (len(train), len(val)) == (8, 2)
    assert sorted(train + val) == sorted(records)


def test_split_errors() -> None:
    with pytest.raises(DatasetError, match=r"at least 2 slides.*split='tile'"):
        split_tiles(_records([4]))
    with pytest.raises(ValueError, match="did you mean 'slide'"):
        split_tiles(_records([2, 2]), split="slid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validation_fraction must lie in"):
        split_tiles(_records([2, 2]), validation_fraction=1.0)


def test_config_checks_itself() -> None:
    with pytest.raises(ValueError, match="multiple of 32, got 100"):
        ModelConfig(input_size=100)
    with pytest.raises(ValueError, match="did you mean 'dice'"):
        ModelConfig(loss="dic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bn_momentum"):
        ModelConfig(bn_momentum=1.5)
    config = ModelConfig(backbone="resnet18", encoder_weights="w.h5", seed=3)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --------------------------------------------------------------------------- datasets


@needs_tf
@pytest.mark.parametrize("manifest", [True, False])
def test_make_datasets_reads_the_tile_format(tmp_path: Path, manifest: bool) -> None:
    records = write_tile_dataset(tmp_path, manifest=manifest, dropped=1 if manifest else 0)
    train, val = make_datasets(tmp_path, batch_size=16, augment=False, validation_fraction=0.3)
    (x, y), (vx, vy) = first_batch(train), first_batch(val)
    assert x.shape[1:] == (SIZE, SIZE, 3)
    assert y.shape[1:] == (SIZE, SIZE, 1)
    assert x.dtype == y.dtype == np.float32
    assert x.min() >= 0.0
    assert x.max() <= 1.0
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert len(x) + len(vx) == len(records) == 12  # dropped tiles are not read
    # validation tiles are the files, unchanged, in the split's order
    expected = split_tiles(records, validation_fraction=0.3, seed=0)[1]
    assert len(vx) == len(expected) == 4  # one slide of 4 tiles
    image, mask = expected[0][:2]
    raw = np.asarray(Image.open(image), dtype=np.float32) / 255
    assert np.array_equal(vx[0], raw)
    assert np.array_equal(vy[0, ..., 0], np.asarray(Image.open(mask), dtype=np.float32))


@needs_tf
def test_make_datasets_from_records_and_explicit_validation(tmp_path: Path) -> None:
    records = write_tile_dataset(tmp_path, manifest=False)
    train, val = make_datasets(records[:8], validation=records[8:], batch_size=4, input_size=32)
    x, y = first_batch(train)
    assert x.shape == (4, 32, 32, 3)
    assert y.shape == (4, 32, 32, 1)
    assert sum(len(b[0]) for b in val) == 4


@needs_tf
def test_augmentation_is_seeded_and_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    write_tile_dataset(tmp_path, slides=2, tiles_per_slide=8)
    a = first_batch(make_datasets(tmp_path, batch_size=8, seed=5)[0])
    b = first_batch(make_datasets(tmp_path, batch_size=8, seed=5)[0])
    c = first_batch(make_datasets(tmp_path, batch_size=8, seed=6)[0])
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    x, y = a
    inside = y[..., 0] > 0.5
    # the disks are bright: after flips, rotations and jitter they still sit under the mask
    assert x.mean(axis=-1)[inside].mean() > x.mean(axis=-1)[~inside].mean() + 0.2


def test_bad_tile_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        make_datasets(tmp_path / "missing")
    with pytest.raises(DatasetError, match="images/ and masks/"):
        make_datasets(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "not-a-tile.png")
    Image.new("L", (4, 4)).save(tmp_path / "masks" / "not-a-tile.png")
    with pytest.raises(DatasetError, match="not a tile name"):
        make_datasets(tmp_path)


# --------------------------------------------------------------------------- Dice in TF

binary_batches = st.tuples(
    st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1)
)


@needs_tf
@settings(max_examples=25, deadline=None)
@given(binary_batches, st.floats(0.0, 1.0))
def test_tf_dice_equals_numpy_dice(shape_seed: tuple[int, int, int, int], density: float) -> None:
    n, h, w, seed = shape_seed
    rng = np.random.default_rng(seed)
    truth = rng.random((n, h, w, 1)) < density
    probs = rng.random((n, h, w, 1)).astype(np.float32)
    probs[rng.random(probs.shape) < 0.3] = 0.0  # some empty predictions too
    ours = np.asarray(dice_metric(truth.astype(np.float32), probs))
    expected = [dice_coefficient(p > 0.5, t) for p, t in zip(probs, truth, strict=True)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    # the soft Dice without smoothing is the numpy soft_dice, per image
    from glomseg.model._losses import _soft_dice

    soft = np.asarray(_soft_dice(truth.astype(np.float32), probs, 0.0))
    np.testing.assert_allclose(
        soft, [soft_dice(p, t) for p, t in zip(probs, truth, strict=True)], rtol=1e-5, atol=1e-6
    )


@needs_tf
def test_dice_edge_cases_and_losses() -> None:
    empty = np.zeros((2, 4, 4, 1), np.float32)
    full = np.ones((2, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(dice_metric(empty, empty), [1.0, 1.0])
    np.testing.assert_array_equal(dice_metric(full, empty), [0.0, 0.0])
    np.testing.assert_allclose(dice_loss(full, full), [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(dice_loss(empty, empty), [0.0, 0.0], atol=1e-7)
    half = np.full_like(full, 0.5)
    assert np.all(np.asarray(bce_dice_loss(full, half)) > np.asarray(dice_loss(full, half)))
    assert dice_metric.__name__ == "dice_metric"


# --------------------------------------------------------------------------- GlomUNet


@needs_tf
def test_import_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "segmentation_models", None)
    with pytest.raises(ImportError, match=r"pip install 'glomseg\[tf\]'"):
        _import_tf()


@needs_tf
def test_predict_gives_probabilities(small_model: GlomUNet, tiles: np.ndarray) -> None:
    probs = small_model.predict(tiles)
    assert probs.shape == (3, SIZE, SIZE)
    assert probs.dtype == np.float32
    assert probs.min() >= 0.0
    assert probs.max() <= 1.0
    # uint8 and [0, 1] floats are the same input
    np.testing.assert_allclose(small_model.predict(tiles / 255.0), probs, atol=1e-5)
    np.testing.assert_array_equal(small_model(tiles), probs)
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\)"):
        small_model.predict(tiles[..., 0])
    with pytest.raises(ValueError, match="input_size"):
        small_model.predict(tiles[:, :32, :32])


@needs_tf
def test_save_and_load_give_identical_predictions(
    small_model: GlomUNet, tiles: np.ndarray, tmp_path: Path
) -> None:
    path = small_model.save(tmp_path / "model.h5")
    config = json.loads((tmp_path / "model.h5.json").read_text())
    assert config["backbone"] == BACKBONE
    assert config["input_size"] == SIZE
    loaded = GlomUNet.load(path)
    assert loaded.config == small_model.config
    np.testing.assert_array_equal(loaded.predict(tiles), small_model.predict(tiles))
    assert loaded.keras_model.loss.__name__ == "bce_dice_loss"


@needs_tf
def test_save_and_load_errors(small_model: GlomUNet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"end in \.h5"):
        small_model.save(tmp_path / "model.pb")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        GlomUNet.load(tmp_path / "nope.h5")
    small_model.keras_model.save_weights(str(tmp_path / "bare.h5"))  # no configuration anywhere
    with pytest.raises(FileNotFoundError, match="configuration"):
        GlomUNet.load(tmp_path / "bare.h5")
    (tmp_path / "bare.h5.json").write_text('{"backbone": "resnet18", ')
    with pytest.raises(ValueError, match=r"bare\.h5\.json: not a GlomUNet configuration"):
        GlomUNet.load(tmp_path / "bare.h5")
    (tmp_path / "bare.h5.json").write_text('{"backbone": "resnet18", "colour": 1}')
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        GlomUNet.load(tmp_path / "bare.h5")


@needs_tf
def test_local_encoder_weights_file(
    small_model: GlomUNet, tiles: np.ndarray, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.h5"
    small_model.keras_model.save_weights(str(weights))
    other = GlomUNet(backbone=BACKBONE, input_size=SIZE, seed=1, encoder_weights=weights)
    assert other.config.encoder_weights == str(weights)
    # same architecture: every layer, encoder and decoder, is loaded by name
    np.testing.assert_array_equal(other.predict(tiles), small_model.predict(tiles))
    with pytest.raises(FileNotFoundError, match="not found"):
        GlomUNet(backbone=BACKBONE, input_size=SIZE, encoder_weights=tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(GlomsegError, match=r"must be a Keras \.h5"):
        GlomUNet(backbone=BACKBONE, input_size=SIZE, encoder_weights=tmp_path / "junk.h5")


@needs_tf
def test_imagenet_offline_fails_fast_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty Keras cache
    if Path("/tmp/.keras/models/resnet18_imagenet_1000_no_top.h5").exists():
        pytest.skip("the weights are cached in /tmp/.keras")
    with pytest.raises(PretrainedWeightsError) as info:
        GlomUNet(backbone=BACKBONE, input_size=SIZE, encoder_weights="imagenet")
    message = str(info.value)
    assert "resnet18_imagenet_1000_no_top.h5" in message
    assert "https://github.com/qubvel/classification_models/releases/download/" in message
    assert "encoder_weights='/path/to/resnet18_imagenet_1000_no_top.h5'" in message
    assert str(tmp_path / ".keras" / "models") in message
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / ".keras" / "models" / "resnet18_imagenet_1000_no_top.h5").exists()


@needs_tf
def test_unknown_backbone_and_cpu_mixed_precision(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        GlomUNet(backbone="resnet19", input_size=SIZE)
    tf, _, _ = _import_tf()
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    with caplog.at_level(logging.WARNING, logger="glomseg.model._model"):
        model = GlomUNet(backbone=BACKBONE, input_size=SIZE, mixed_precision=True)
    assert "needs a GPU" in caplog.text
    assert model.keras_model.dtype_policy.name == "float32"
    assert model.keras_model.output.dtype == tf.float32


def _learns(tmp_path: Path, *, backbone: str, loss: str, size: int, epochs: int = 4) -> None:
    write_tile_dataset(tmp_path / "tiles", slides=4, tiles_per_slide=12, size=size)
    train, val = make_datasets(tmp_path / "tiles", batch_size=4, seed=0, validation_fraction=0.25)
    model = GlomUNet(backbone=backbone, input_size=size, loss=loss, seed=0)  # type: ignore[arg-type]
    before = model.evaluate(val)["dice_metric"]
    history = model.fit(
        train, val, epochs=epochs, steps_per_epoch=10, checkpoint_dir=tmp_path / "ck", patience=None
    )
    after = max(history["val_dice_metric"])
    assert before < 0.3, f"validation Dice {before:.3f} before training"
    assert after > 0.6, f"validation Dice only {before:.3f} -> {after:.3f} in {epochs}0 steps"
    assert len(history["loss"]) == epochs
    assert {"loss", "dice_metric", "val_loss", "val_dice_metric"} <= set(history)
    # the best checkpoint, its configuration and the CSV log are written, and it loads
    assert (tmp_path / "ck" / "best.h5.json").is_file()
    with (tmp_path / "ck" / "log.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == epochs
    best = GlomUNet.load(tmp_path / "ck" / "best.h5")
    assert best.evaluate(val)["dice_metric"] == pytest.approx(after, abs=1e-4)


@needs_tf
def test_model_learns_on_synthetic_tiles(tmp_path: Path) -> None:
    _learns(tmp_path, backbone=BACKBONE, loss="bce_dice", size=SIZE)


@needs_tf
@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "loss", "size", "epochs"),
    [("resnet34", "bce_dice", 128, 6), ("resnet18", "dice", 64, 12)],
)
def test_model_learns_other_settings(
    tmp_path: Path, backbone: str, loss: str, size: int, epochs: int
) -> None:
    _learns(tmp_path, backbone=backbone, loss=loss, size=size, epochs=epochs)


# --------------------------------------------------------------------------- review fixes


@needs_tf
def test_predict_rejects_floats_outside_unit_range(
    small_model: GlomUNet, tiles: np.ndarray
) -> None:
    # float images in 0..255 would silently be scaled to 0..65025
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small_model.predict(tiles.astype(np.float32))
    bad = (tiles / 255.0).astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small_model.predict(bad)


@needs_tf
def test_predict_empty_batch(small_model: GlomUNet) -> None:
    probs = small_model.predict(np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert probs.shape == (0, SIZE, SIZE)
    assert probs.dtype == np.float32


@needs_tf
def test_datasets_do_not_depend_on_the_global_tf_seed(tmp_path: Path) -> None:
    _, keras, _ = _import_tf()
    write_tile_dataset(tmp_path, slides=2, tiles_per_slide=8)
    batches = []
    for global_seed in (1, 2):
        keras.utils.set_random_seed(global_seed)  # as building a GlomUNet(seed=...) does
        batches.append(first_batch(make_datasets(tmp_path, batch_size=8, seed=5)[0]))
    assert np.array_equal(batches[0][0], batches[1][0])
    assert np.array_equal(batches[0][1], batches[1][1])


class _FakeKerasUtils:
    """Stands in for tf_keras.utils: records any call that could download."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def get_file(self, *args: object, **kwargs: object) -> str:
        self.calls.append(args)
        raise AssertionError("the real get_file may download")


def test_imagenet_cache_is_never_revalidated_over_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glomseg.model._weights import no_downloads as _no_downloads

    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".keras" / "models"
    cache.mkdir(parents=True)
    good = b"weights"
    (cache / "good.h5").write_bytes(good)
    (cache / "partial.h5").write_bytes(b"weig")  # an interrupted download
    md5 = hashlib.md5(good).hexdigest()
    utils = _FakeKerasUtils()
    with _no_downloads(utils, "resnet18"):
        path = utils.get_file("good.h5", "https://x/good.h5", cache_subdir="models", md5_hash=md5)
        assert Path(path) == cache / "good.h5"
        with pytest.raises(PretrainedWeightsError, match=r"partial\.h5"):
            utils.get_file("partial.h5", "https://x/p.h5", cache_subdir="models", md5_hash=md5)
    assert utils.calls == []


def test_config_write_failure_keeps_the_old_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glomseg.model._config import _config_path, _write_config

    model_path = tmp_path / "model.h5"
    _write_config(ModelConfig(backbone="resnet18"), model_path)
    before = _config_path(model_path).read_text()

    def disk_full(self: Path, data: str, *args: object, **kwargs: object) -> int:
        with self.open("w") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        _write_config(ModelConfig(backbone="resnet34"), model_path)
    assert _config_path(model_path).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5.json"]


def _without_tf_log_level() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


@needs_tf
def test_tensorflow_loads_quietly_unless_asked() -> None:
    code = (
        "from glomseg.model._tf import import_tf\n"
        "tf, keras, sm = import_tf()\n"
        "print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))))\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_without_tf_log_level()
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "3.0\n"
    assert quiet.stderr == ""


def test_start_up_noise_is_dropped_and_the_rest_passes() -> None:
    code = (
        "import os, sys\n"
        "from glomseg.model._tf import _without_start_up_noise\n"
        "with _without_start_up_noise():\n"
        "    os.write(2, b'W0000 00:00:1.2 1 cuda_platform.cc:52] failed call to cuInit: x\\n')\n"
        "    os.write(2, b'a real problem\\n')\n"
        "    print('from Python', file=sys.stderr)\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called\\n')\n"
        "print('after', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "a real problem\nfrom Python\nafter\n"
