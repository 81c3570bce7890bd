"""Model files are data: loading one never runs code from it, and a bad file is refused."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from glomseg.errors import ModelFileError
from glomseg.model import GlomUNet, ModelConfig
from glomseg.model._config import _write_config

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
pytestmark = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")

SIZE = 64
BACKBONE = "resnet18"


@pytest.fixture(scope="module")
def small_model() -> GlomUNet:
    return GlomUNet(backbone=BACKBONE, input_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)


def _keras() -> Any:
    from glomseg.model._tf import import_tf

    return import_tf()[1]


def _keras_save(model: Any, path: Path) -> None:
    """``model.save(path)`` as Keras itself writes it (``.h5``: its legacy format, as asked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
        model.save(str(path))


def _payload(marker: Path) -> Any:
    """A function that writes ``marker``: what a hostile model file would run instead."""

    target = str(marker)  # Keras stores the closure's values as JSON

    def write_marker(x: Any) -> Any:
        import pathlib

        pathlib.Path(target).write_text("ran")
        return x

    return write_marker


def _hostile_files(small_model: GlomUNet, folder: Path, marker: Path) -> dict[str, Path]:
    """Two ``.h5`` files (as Keras writes them) with a Lambda layer that writes ``marker``.

    ``wrapped`` is the glomseg model with the Lambda on its output: its weights
    fit its configuration. ``foreign`` is another network: they do not. Each has
    a valid ``<file>.json`` beside it, as :meth:`GlomUNet.save` writes.
    """
    keras = _keras()
    net = small_model.keras_model
    wrapped = keras.Model(net.input, keras.layers.Lambda(_payload(marker))(net.output))
    inputs = keras.Input((SIZE, SIZE, 3))
    foreign = keras.Model(
        inputs, keras.layers.Conv2D(1, 1)(keras.layers.Lambda(_payload(marker))(inputs))
    )
    files = {}
    for name, model in (("wrapped", wrapped), ("foreign", foreign)):
        path = folder / f"{name}.h5"
        _keras_save(model, path)
        _write_config(small_model.config, path)
        files[name] = path
    marker.unlink()  # building the Lambda ran it once; from here on, nothing may
    return files


@pytest.mark.parametrize("compile", [True, False])
def test_a_hostile_h5_runs_no_code(
    small_model: GlomUNet, tiles: np.ndarray, tmp_path: Path, compile: bool
) -> None:
    marker = tmp_path / "pwned.txt"
    files = _hostile_files(small_model, tmp_path, marker)
    loaded = GlomUNet.load(files["wrapped"], compile=compile)
    np.testing.assert_array_equal(loaded.predict(tiles), small_model.predict(tiles))
    with pytest.raises(ModelFileError, match=r"foreign\.h5: has no weights for layer 'bn_data'"):
        GlomUNet.load(files["foreign"], compile=compile)
    assert not marker.exists()
    # the files are real attacks: Keras' own loader runs the payload
    _keras().models.load_model(str(files["wrapped"]), compile=False)
    assert marker.read_text() == "ran"


def test_predict_slides_with_a_hostile_model_runs_no_code(
    small_model: GlomUNet, tmp_path: Path
) -> None:
    from glomseg import PredictConfig, predict_slides
    from glomseg.io.synthetic import write_synthetic_slide

    marker = tmp_path / "pwned.txt"
    files = _hostile_files(small_model, tmp_path, marker)
    slide = write_synthetic_slide(tmp_path / "s.tif", (128, 128), tile=64)
    config = PredictConfig(tile_size=SIZE, downsample=2, chunk_size=128)
    report = predict_slides(
        [slide.path], files["wrapped"], tmp_path / "out", config=config, progress=False
    )
    assert report.failed == {}
    assert list(report.done) == ["s"]
    assert not marker.exists()


def test_save_writes_data_only_and_round_trips(
    small_model: GlomUNet, tiles: np.ndarray, tmp_path: Path
) -> None:
    import h5py  # type: ignore[import-untyped]

    path = small_model.save(tmp_path / "model.h5")
    with h5py.File(path, "r") as handle:
        assert "model_config" not in handle.attrs
        assert "training_config" not in handle.attrs
        stored = ModelConfig.from_dict(json.loads(handle.attrs["glomseg_config"]))
        assert stored == small_model.config
        kinds = set()
        handle.visititems(lambda _, item: kinds.add(type(item).__name__))
    assert kinds == {"Group", "Dataset"}
    (tmp_path / "model.h5.json").unlink()  # the file alone is enough
    loaded = GlomUNet.load(path, compile=False)
    assert loaded.config == small_model.config
    np.testing.assert_array_equal(loaded.predict(tiles), small_model.predict(tiles))
    with pytest.raises(ValueError, match=r"end in \.h5"):
        small_model.save(tmp_path / "model.keras")


def test_optimizer_state_is_restored(tmp_path: Path, tiles: np.ndarray) -> None:
    model = GlomUNet(backbone=BACKBONE, input_size=SIZE, seed=3)
    masks = (tiles[..., :1] > 128).astype(np.float32)
    model.keras_model.fit(model.preprocess(tiles), masks, epochs=1, verbose=0)
    path = model.save(tmp_path / "trained.h5")
    state = [v.numpy() for v in model.keras_model.optimizer.variables]
    assert len(state) > 1
    assert int(state[0]) == 1
    loaded = GlomUNet.load(path, compile=True)
    restored = [v.numpy() for v in loaded.keras_model.optimizer.variables]
    assert len(restored) == len(state)
    for a, b in zip(restored, state, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = GlomUNet.load(path, compile=False)
    assert len(fresh.keras_model.optimizer.variables) <= 1


def test_files_of_earlier_releases_still_load(
    small_model: GlomUNet, tiles: np.ndarray, tmp_path: Path
) -> None:
    # what GlomUNet.save wrote before: Keras' whole-model .h5 or .keras, and the .json beside it
    expected = small_model.predict(tiles)
    for name in ("old.h5", "old.keras"):
        _keras_save(small_model.keras_model, tmp_path / name)
        _write_config(small_model.config, tmp_path / name)
    for compile in (True, False):
        old = GlomUNet.load(tmp_path / "old.h5", compile=compile)
        np.testing.assert_array_equal(old.predict(tiles), expected)
    with pytest.raises(ModelFileError, match=r"old\.keras: .*trust=True"):
        GlomUNet.load(tmp_path / "old.keras")
    trusted = GlomUNet.load(tmp_path / "old.keras", trust=True)
    np.testing.assert_array_equal(trusted.predict(tiles), expected)
    # weights-only files (Keras' save_weights) load too, with the .json beside them
    small_model.keras_model.save_weights(str(tmp_path / "weights.h5"))
    _write_config(small_model.config, tmp_path / "weights.h5")
    np.testing.assert_array_equal(GlomUNet.load(tmp_path / "weights.h5").predict(tiles), expected)


def _set_config(path: Path, config: ModelConfig) -> None:
    import h5py

    with h5py.File(path, "r+") as handle:
        handle.attrs["glomseg_config"] = json.dumps(config.to_dict())


def test_files_that_do_not_fit_are_refused(small_model: GlomUNet, tmp_path: Path) -> None:
    import dataclasses

    import h5py

    path = small_model.save(tmp_path / "m.h5")
    _set_config(path, dataclasses.replace(small_model.config, decoder_filters=(8, 8, 8, 8, 8)))
    with pytest.raises(ModelFileError, match=r"m\.h5: .*decoder_stage0a_conv/kernel:0.* shape"):
        GlomUNet.load(path)
    path = small_model.save(tmp_path / "m.h5")
    with h5py.File(path, "r+") as handle:  # a layer the model does not have
        weights = handle["model_weights"]
        names = [str(name) for name in weights.attrs["layer_names"]]
        weights.attrs["layer_names"] = [name.encode() for name in [*names, "extra"]]
        weights.create_group("extra").attrs["weight_names"] = [b"extra/kernel:0"]
        weights["extra"].create_dataset("extra/kernel:0", data=np.zeros(3))
    with pytest.raises(ModelFileError, match=r"m\.h5: layer 'extra' is not in the model"):
        GlomUNet.load(path)
    path = small_model.save(tmp_path / "m.h5")
    with h5py.File(path, "r+") as handle:  # text where numbers belong
        group = handle["model_weights/final_conv"]
        del group["final_conv/bias:0"]
        group.create_dataset("final_conv/bias:0", data=np.array([b"rm -rf"]))
    with pytest.raises(ModelFileError, match=r"m\.h5: .*bias:0 is not an array of numbers"):
        GlomUNet.load(path)
    path = small_model.save(tmp_path / "m.h5")
    path.write_bytes(path.read_bytes()[:4096])  # truncated
    with pytest.raises(ModelFileError, match=r"m\.h5: not an HDF5 model file"):
        GlomUNet.load(path)
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ModelFileError, match=r"bad\.h5: not an HDF5 model file"):
        GlomUNet.load(tmp_path / "bad.h5")
    path = small_model.save(tmp_path / "c.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs["glomseg_config"] = "[1, 2"
    with pytest.raises(ModelFileError, match=r"c\.h5: its configuration is not JSON"):
        GlomUNet.load(path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["glomseg_config"] = '{"backbone": "resnet18", "colour": 1}'
    with pytest.raises(ValueError, match=r"c\.h5: not a GlomUNet configuration .*colour"):
        GlomUNet.load(path)
