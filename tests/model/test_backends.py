"""Prediction backends and precisions: float32's masks, clear errors, one compile a model."""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from glomseg import PredictConfig, predict_image
from glomseg.errors import BackendError
from glomseg.evaluate import dice_coefficient
from glomseg.model import _backends
from glomseg.model._backends import cpu_bfloat16, resolve_backend

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")
needs_openvino = pytest.mark.skipif(
    not HAS_OPENVINO, reason="needs the openvino extra: pip install 'glomseg[openvino]'"
)

#: A real tile of the bundled sample (HuBMAP VAN0013, 0.98 um/px; examples/data/ATTRIBUTION.md).
SAMPLE = Path(__file__).parents[2] / "examples" / "data" / "sample" / "van0013_train_107.tif"

#: Lowest Dice of a backend's mask against float32's that the docs promise.
MASK_DICE = 0.99


# -- choosing a backend: no TensorFlow needed ---------------------------------------------------


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    return str(path)


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 fma", False),
        ("fpu avx512f avx512bw avx512_vnni", False),
        ("fpu avx512f avx512_bf16 avx512_vnni", True),
        ("fpu avx512f amx_tile amx_bf16 amx_int8", True),
    ],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    assert cpu_bfloat16(_cpuinfo(tmp_path, flags)) is native


def test_a_cpuinfo_without_flags_means_no_bfloat16(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\n")
    assert cpu_bfloat16(str(path)) is False


def test_auto_picks_openvino_where_installed_and_bfloat16_where_native(monkeypatch):
    monkeypatch.setattr(_backends, "cpu_bfloat16", lambda: True)
    monkeypatch.setattr(_backends, "openvino_available", lambda: True)
    assert resolve_backend() == ("openvino", "bfloat16")
    monkeypatch.setattr(_backends, "cpu_bfloat16", lambda: False)
    assert resolve_backend() == ("openvino", "float32")
    monkeypatch.setattr(_backends, "openvino_available", lambda: False)
    assert resolve_backend() == ("tensorflow", "float32")
    assert resolve_backend("tensorflow", "bfloat16") == ("tensorflow", "bfloat16")


def test_auto_leaves_a_gpu_to_tensorflow(monkeypatch):
    monkeypatch.setattr(_backends, "cpu_bfloat16", lambda: True)
    monkeypatch.setattr(_backends, "openvino_available", lambda: True)
    assert resolve_backend(gpu=True) == ("tensorflow", "float32")
    assert resolve_backend("openvino", "auto", gpu=True) == ("openvino", "float32")


def test_openvino_without_the_extra_names_it(monkeypatch):
    monkeypatch.setattr(_backends, "openvino_available", lambda: False)
    with pytest.raises(BackendError, match=r"pip install 'glomseg\[openvino\]'"):
        resolve_backend("openvino", "float32")


def test_openvino_bfloat16_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(_backends, "openvino_available", lambda: True)
    monkeypatch.setattr(_backends, "cpu_bfloat16", lambda: False)
    with pytest.raises(BackendError, match="AVX-512 BF16 or AMX"):
        resolve_backend("openvino", "bfloat16")


@pytest.mark.parametrize(("field", "value"), [("backend", "onnx"), ("precision", "float16")])
def test_unknown_names_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        PredictConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        resolve_backend(**{field: value})


def test_a_plain_predictor_must_leave_the_backend_to_auto():
    def dark(batch: np.ndarray) -> np.ndarray:
        return (batch[..., 1] < 128).astype(np.float32)

    image = np.full((40, 40, 3), 230, dtype=np.uint8)
    config = PredictConfig(tile_size=16, downsample=1, tta=False)
    assert not predict_image(image, dark, config=config).any()  # auto: runs as it is
    with pytest.raises(ValueError, match="apply to a GlomUNet, and the model is a function"):
        predict_image(image, dark, config=PredictConfig(tile_size=16, backend="openvino"))


# -- the shipped model on a real tile ----------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    if not HAS_TF:
        pytest.skip("needs the tf extra: pip install 'glomseg[tf]'")
    from glomseg import GlomUNet

    return GlomUNet.pretrained()


@pytest.fixture(scope="module")
def tile() -> np.ndarray:
    return np.asarray(tifffile.imread(SAMPLE))


@pytest.fixture(scope="module")
def float32_mask(model, tile) -> np.ndarray:
    config = PredictConfig(tta=False, backend="tensorflow", precision="float32")
    mask = predict_image(tile, model, pixel_size_um=0.98, config=config)
    assert mask.sum() > 10_000  # the tile holds glomeruli, so agreement means something
    return mask


@needs_tf
def test_the_traced_model_gives_keras_probabilities(model, tile):
    size = model.config.input_size
    tiles = np.stack([tile[:size, :size], tile[size : 2 * size, :size], tile[-size:, -size:]])
    expected = model.keras_model.predict(model.preprocess(tiles), verbose=0)[..., 0]
    np.testing.assert_allclose(model.predict(tiles, batch_size=2), expected, atol=1e-5)
    assert model.predict(tiles[:0]).shape == (0, size, size)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(tiles, batch_size=0)


@needs_tf
@pytest.mark.parametrize(
    ("backend", "precision"),
    [
        pytest.param("openvino", "float32", marks=needs_openvino),
        ("tensorflow", "bfloat16"),  # native or emulated: the same arithmetic
    ],
)
def test_each_backend_gives_float32_masks(model, tile, float32_mask, backend, precision):
    config = PredictConfig(tta=False, backend=backend, precision=precision)
    mask = predict_image(tile, model, pixel_size_um=0.98, config=config)
    assert dice_coefficient(mask, float32_mask) >= MASK_DICE
    probs = model.compiled(backend, precision)(tile[np.newaxis, :256, :256])
    assert probs.dtype == np.float32
    assert probs.shape == (1, 256, 256)


@needs_tf
@needs_openvino
def test_a_compiled_model_is_cached_and_follows_new_weights(model, tile):
    first = model.compiled("openvino", "float32")
    assert model.compiled("openvino", "float32") is first
    assert repr(first) == "CompiledPredictor(backend='openvino', precision='float32')"
    batch = tile[np.newaxis, :256, :256]
    before = first(batch)
    network = model.keras_model
    saved = network.get_weights()
    try:
        last = network.layers[-1] if network.layers[-1].weights else network.layers[-2]
        kernel, *rest = last.get_weights()
        last.set_weights([kernel * 0.0, *(r * 0.0 - 50.0 for r in rest)])  # sigmoid(-50) ~ 0
        again = model.compiled("openvino", "float32")
        assert again is not first
        assert again(batch).max() < 1e-6 < before.max()
    finally:
        network.set_weights(saved)
    np.testing.assert_allclose(model.compiled("openvino", "float32")(batch), before, atol=1e-6)


@needs_tf
def test_bfloat16_needs_no_encoder_weights_file(tmp_path):
    from glomseg import GlomUNet
    from glomseg.model._tf import import_tf

    small = GlomUNet(backbone="resnet18", input_size=64, encoder_weights=None, seed=0)
    # As GlomUNet.load leaves a model trained from an encoder file that is gone since: its
    # configuration names the file, its weights are all in the network.
    small._config = dataclasses.replace(small.config, encoder_weights=str(tmp_path / "gone.h5"))
    batch = np.full((2, 64, 64, 3), 128, dtype=np.uint8)
    probs = small.compiled("tensorflow", "bfloat16")(batch)
    # Its own weights, in bfloat16 (an untrained network's few near-zero logits may flip).
    assert np.abs(probs - small.predict(batch)).mean() < 0.02
    _, keras, _ = import_tf()
    assert keras.mixed_precision.global_policy().name == "float32"


@needs_tf
def test_threads_sharing_a_model_compile_it_once():
    from glomseg import GlomUNet
    from glomseg.model._tf import import_tf

    small = GlomUNet(backbone="resnet18", input_size=64, encoder_weights=None, seed=0)
    barrier = threading.Barrier(3)
    got: list[object] = []

    def compile_() -> None:
        barrier.wait()
        got.append(small.compiled("tensorflow", "bfloat16"))

    threads = [threading.Thread(target=compile_) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 3
    assert all(p is got[0] for p in got)  # one network built, not one a thread
    _, keras, _ = import_tf()
    assert keras.mixed_precision.global_policy().name == "float32"  # left as it was


@needs_tf
@needs_openvino
def test_openvino_serves_threads_at_once(model, tile):
    predictor = model.compiled("openvino", "float32")
    batches = [tile[np.newaxis, r : r + 256, :256] for r in (0, 256, 512, 768)]
    expected = [predictor(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(3):
            results[i] = predictor(batches[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-6)


@needs_tf
def test_openvino_failing_to_compile_is_an_error_or_for_auto_tensorflow(
    model, tile, monkeypatch, caplog
):
    from glomseg import GlomUNet

    attempts = []

    def broken(model: object, precision: str, int8: object = None) -> None:
        attempts.append(precision)
        raise RuntimeError("Cannot create Foo layer")

    fresh = GlomUNet.from_config(model.config)  # an empty cache
    monkeypatch.setattr(_backends, "_openvino_run", broken)
    monkeypatch.setattr(_backends, "openvino_available", lambda: True)
    with pytest.raises(BackendError, match=r"OpenVINO could not compile the model.*Foo layer"):
        fresh.compiled("openvino", "float32")
    with caplog.at_level("WARNING", logger="glomseg.model._backends"):
        chosen = fresh.compiled("auto", "float32")
    assert chosen.backend == "tensorflow"
    assert "predicting with TensorFlow instead" in caplog.text
    assert fresh.compiled("auto", "float32") is chosen  # not tried again for these weights
    assert len(attempts) == 2


@needs_tf
def test_predict_slide_records_the_backend_it_ran(model, tile, tmp_path):
    from glomseg import predict_slide

    path = tmp_path / "tile.tif"
    tifffile.imwrite(path, tile)
    config = PredictConfig(backend="tensorflow", precision="float32", tta=False)
    mask = predict_slide(path, model, config=config, pixel_size_um=0.98, progress=False)
    assert (mask.attributes["backend"], mask.attributes["precision"]) == (
        "tensorflow",
        "float32",
    )
